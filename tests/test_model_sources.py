"""Models from the hub and from GGUF files: an unreachable hub named at once, the HF cache used offline, the conversion
cache (damaged, unwritable, its GGUF replaced), gguf's absence and a GGUF's special tokens."""
import pytest
import torch
from helpers import one_line, tiny_hf_model, tiny_tokenizer

import model_io.loading as loading
from model_io import ModelSpecError, export_hf, load
from model_io.convert import from_hf_model


def test_unreachable_hub_fails_at_once_and_says_no_such_local_path(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    with pytest.raises(ModelSpecError, match="hub cannot be reached") as e:
        load("runs/trian")
    assert "(no local path 'runs/trian' either)" in one_line(e)


def test_the_hub_is_unreachable_only_where_no_answer_came(monkeypatch):
    """hub_unreachable (also data/gsm8k.py's) says why only for no connection: an HTTP error is an answer (the real
    load names it), and a timeout may be a slow network, so the load is tried."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class NotFound(HfHubHTTPError):
        def __init__(self):
            Exception.__init__(self, "404 Client Error: Not Found")

    class ReadTimeout(OSError):  # (the HTTP client's own timeout class)
        pass

    for err, why in ((NotFound(), None), (TimeoutError(), None), (ReadTimeout("read timed out"), None),
                     (ConnectionError("Name or service not known\n(more)"), "Name or service not known"), (OSError(), "OSError")):
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, e=err, **k: (_ for _ in ()).throw(e))
        assert loading.hub_unreachable("someone/tiny") == why, err


def test_a_hub_id_with_only_its_config_cached_is_fetched(tmp_path, monkeypatch):
    """The config in the HF cache, the weights not: the cached read fails and the load goes on to the hub (here
    unreachable, which it names) rather than ending in transformers' error about the cache."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny"
    tiny_hf_model("qwen2").config.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda *a, **k: "no DNS (test)")
    with pytest.raises(ModelSpecError, match=r"^'someone/tiny' is not in the HF cache and the Hugging Face hub cannot be "
                                             r"reached \(no DNS \(test\)\)") as e:
        load("someone/tiny")
    one_line(e)


def test_a_hub_id_in_the_hf_cache_loads_without_network(tmp_path, monkeypatch, tiny):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny"
    export_hf(*tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda *a, **k: pytest.fail("went online for a cached model"))
    model, tok = load("someone/tiny")
    x = torch.randint(0, 259, (1, 5))
    with torch.no_grad():
        assert torch.allclose(model(x), tiny[0](x), atol=1e-5)
    assert tok.eos_token == "<|im_end|>"


def test_a_hub_id_of_another_architecture_is_named_before_its_weights_load(tmp_path, monkeypatch):
    """A cached hub model that is not Llama or Qwen2: one line naming the hub id, from its config alone."""
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM, GPT2Config

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--gpt"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=300).save_pretrained(repo / "snapshots" / commit)
    tiny_tokenizer().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda *a, **k: pytest.fail("went online for a cached model"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("read the weights"))
    with pytest.raises(ModelSpecError, match="^someone/gpt: unsupported architecture 'gpt2'; supported are llama, qwen2") as e:
        load("someone/gpt")
    one_line(e)


def test_cache_dir_set_empty_or_with_a_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MCTS_GRPO_CACHE", "")
    assert loading.cache_dir() == tmp_path / ".cache" / "mcts_grpo"
    monkeypatch.setenv("MCTS_GRPO_CACHE", "~/conv")
    assert loading.cache_dir() == tmp_path / "conv"


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch, tiny):
    """A .gguf 'converted' by a stand-in for transformers, counting conversions."""
    calls = []
    monkeypatch.setattr(loading, "_load_hf", lambda spec, *a, **kw: calls.append(spec) or from_hf_model(tiny_hf_model("qwen2")))
    real = loading._tokenizer  # (a cached conversion's tokenizer is read for real)
    monkeypatch.setattr(loading, "_tokenizer", lambda spec, **kw: tiny_tokenizer() if kw.get("gguf_file") else real(spec, **kw))
    monkeypatch.setattr(loading, "gguf_special_tokens", lambda tok, path: None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    return tmp_path / "m.gguf", calls


def test_a_damaged_cached_conversion_is_converted_again(fake_gguf, tmp_path, monkeypatch, capsys):
    gguf_file, calls = fake_gguf
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))
    load(gguf_file)
    load(gguf_file)
    assert len(calls) == 1  # the second load read the cache
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "model.safetensors").write_bytes(b"garbage")
    load(gguf_file)
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert f"cached conversion {entry} is damaged" in err and "converting m.gguf again" in err
    load(gguf_file)
    assert len(calls) == 2  # rewritten whole


def test_a_cached_conversion_that_lost_its_chat_template_is_converted_again(fake_gguf, tmp_path, monkeypatch, capsys):
    """It loaded, so it was taken, and every run blamed the GGUF file for the missing template."""
    gguf_file, calls = fake_gguf
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))
    load(gguf_file)
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "chat_template.jinja").unlink()
    _, tok = load(gguf_file)
    assert len(calls) == 2 and tok.chat_template
    assert f"cached conversion {entry} is damaged (the tokenizer of {gguf_file} has no chat template" in capsys.readouterr().err
    load(gguf_file)
    assert len(calls) == 2


def test_a_gguf_with_nan_weights_is_refused_before_it_is_cached(fake_gguf, tmp_path, monkeypatch):
    gguf_file, _ = fake_gguf
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))

    def nan_model(spec, *a, **kw):
        model = from_hf_model(tiny_hf_model("qwen2"))
        model.norm.weight.data[0] = float("nan")
        return model

    monkeypatch.setattr(loading, "_load_hf", nan_model)
    with pytest.raises(ModelSpecError, match=f"^{gguf_file}: 1 weight tensor holds NaN or inf"):
        load(gguf_file)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # (517 MB for the default model)


def test_an_unwritable_cache_is_named_once_per_load(fake_gguf, tmp_path, monkeypatch, capsys):
    gguf_file, calls = fake_gguf
    (tmp_path / "afile").write_text("x")  # a cache under a file cannot be created, even as root
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "afile" / "cache"))
    model, _ = load(gguf_file)
    assert not model.training
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: cannot write the converted model to the cache") and "$MCTS_GRPO_CACHE" in line
    assert str(tmp_path / "afile" / "cache") in line


def test_a_gguf_replaced_in_place_is_converted_again(fake_gguf, tmp_path, monkeypatch):
    gguf_file, calls = fake_gguf
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))
    load(gguf_file)
    gguf_file.write_bytes(b"GGUF, another quantization")  # a new download over the old file: not the cached model
    load(gguf_file)
    load(gguf_file)
    assert len(calls) == 2


def test_a_gguf_without_the_gguf_package_says_how_to_install_it(fake_gguf, tmp_path, monkeypatch):
    gguf_file, _ = fake_gguf
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))

    def no_gguf(*a, **k):
        raise ImportError("No module named 'gguf'")

    monkeypatch.setattr(loading, "_load_hf", no_gguf)
    with pytest.raises(ModelSpecError, match=r"^reading GGUF needs the gguf package \(No module named 'gguf'\): pip install gguf$"):
        load(gguf_file)


def test_a_gguf_tokenizers_end_and_padding_tokens_come_from_its_metadata(tmp_path, monkeypatch):
    """transformers 5.17 (the GPU image's) reads a GGUF tokenizer with eos = bos and no padding token: the file's
    own token ids put them right, in the cached conversion too. (Stand-ins for transformers' conversion.)"""
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_eos_token_id(258)
    w.add_pad_token_id(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    def as_517(spec, **kw):
        tok = tiny_tokenizer()
        tok.eos_token, tok.pad_token = "<|im_start|>", None
        return tok

    real = loading._tokenizer
    monkeypatch.setenv("MCTS_GRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "_load_hf", lambda spec, *a, **kw: from_hf_model(tiny_hf_model("qwen2")))
    monkeypatch.setattr(loading, "_tokenizer", lambda spec, **kw: as_517(spec) if kw.get("gguf_file") else real(spec, **kw))
    for _ in range(2):  # converted, then read from the cache
        _, tok = load(tmp_path / "m.gguf")
        assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
