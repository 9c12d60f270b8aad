"""Bad model specs and damaged model files end in one ModelSpecError line naming the file and the fix."""
import os

import pytest
import torch
from helpers import one_line, tiny_tokenizer

import model_io.loading as loading
from model_io import ModelSpecError, export_hf, load, save_model
from model_io.convert import from_hf_model


def test_corrupt_weights_in_a_transformers_directory(tmp_path, tiny):
    export_hf(*tiny, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelSpecError, match="is corrupt or truncated") as e:
        load(tmp_path / "hf")
    assert str(weights) in one_line(e)


def test_unreadable_config_json_is_named(tmp_path, tiny):
    export_hf(*tiny, tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text("{bad")
    with pytest.raises(ModelSpecError, match="is not valid JSON") as e:
        load(tmp_path / "hf")
    assert str(tmp_path / "hf" / "config.json") in one_line(e)


def test_a_config_json_that_is_not_a_models_is_named(tmp_path, tiny):
    """A mistyped field or no model_type (a run's or an eval's config.json) once left transformers' traceback."""
    export_hf(*tiny, tmp_path / "hf")
    cfg = tmp_path / "hf" / "config.json"
    for text, why in (('{"model_type": "llama", "hidden_size": "x"}', "hidden_size"), ("[1, 2]", "model_type"),
                      ('{"steps": 3}', "model_type")):
        cfg.write_text(text)
        with pytest.raises(ModelSpecError, match=f"{cfg} is not a model config .*{why}.*restore it") as e:
            load(tmp_path / "hf")
        one_line(e)
    run = tmp_path / "run"  # what run.py train leaves: its config.json and checkpoints/step-N/model
    save_model(*tiny, run / "checkpoints" / "step-000003" / "model")
    (run / "config.json").write_text('{"steps": 3}')
    with pytest.raises(ModelSpecError, match=r"holds run\.py's outputs, not a model \(a training run's are its checkpoints/step-N/model\)"):
        load(run)
    with pytest.raises(ModelSpecError, match=f"no config.json\\): pass {run / 'checkpoints' / 'step-000003' / 'model'}, the model it holds"):
        load(run / "checkpoints" / "step-000003")
    ev = tmp_path / "eval"  # what run.py eval leaves: its config.json beside summary.json
    ev.mkdir()
    (ev / "summary.json").write_text('{"questions": 2}')
    (ev / "config.json").write_text('{"limit": 2}')
    with pytest.raises(ModelSpecError, match=f"^{ev / 'config.json'} is not a model config .*holds run\\.py's outputs, not a model"):
        load(ev)


def test_what_transformers_cannot_read_in_a_directory_is_one_line_naming_it(tmp_path, tiny):
    """No weights file, a damaged tokenizer.json: transformers' own errors (pages of text, tracebacks) become one
    line naming the directory and the fix."""

    def edited(name, edit):
        d = tmp_path / name
        export_hf(*tiny, d)
        edit(d)
        return d

    d = edited("a", lambda d: (d / "model.safetensors").unlink())
    with pytest.raises(ModelSpecError, match=f"transformers cannot read the model in {d} .*model.safetensors") as e:
        load(d)
    one_line(e)
    assert (loading.first_line(ValueError("first\nsecond")), loading.first_line(ValueError())) == ("first", "no message")
    d = edited("b", lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"))  # (not a torch pickle: damaged)
    with pytest.raises(ModelSpecError, match=f"transformers cannot read the model in {d} .*those weights, whole, beside it "
                                             r"\(pytorch_model\.bin\)$"):  # it named model.safetensors (a fuzz)
        load(d)
    d = edited("c", lambda d: (d / "tokenizer.json").write_text("{bad"))
    with pytest.raises(ModelSpecError, match=f"transformers cannot read the tokenizer in {d} .*restore its tokenizer files") as e:
        load(d)
    one_line(e)


def test_weights_that_do_not_make_the_configs_model_are_refused_in_one_line(tmp_path, tiny, capsys):
    """transformers fills a tensor missing from the weights (or of the wrong shape) with random numbers and only
    warns, in a page-long LOAD REPORT: each case is one line here, naming a tensor, and transformers' report is
    not printed."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    def edited(name, config=None, weights=None):
        d = tmp_path / name
        export_hf(*tiny, d)
        if config:
            c = {**json.loads((d / "config.json").read_text()), **config}
            if "layer_types" in c:  # (transformers checks it against num_hidden_layers)
                c["layer_types"] = [c["layer_types"][0]] * c["num_hidden_layers"]
            (d / "config.json").write_text(json.dumps(c))
        if weights:
            sd = load_file(d / "model.safetensors")
            weights(sd)
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        return d

    layers = tiny[0].cfg.n_layers
    cases = [
        (edited("a", config={"intermediate_size": 7}), r"do not fit its config: model\.layers\.0\.mlp\.down_proj\.weight is "
         r"\[\d+, \d+\] in the weights but \[\d+, 7\] by the config \(\d+ tensors differ\)"),
        (edited("b", weights=lambda sd: sd.pop("model.layers.0.mlp.down_proj.weight")),
         r"lack 1 of the model's tensors \(model\.layers\.0\.mlp\.down_proj\.weight\), which would start as random numbers"),
        (edited("c", config={"num_hidden_layers": layers + 1}), rf"lack \d+ of the model's tensors \(model\.layers\.{layers}\."),
        (edited("d", config={"num_hidden_layers": layers - 1}), rf"hold more layers than its config's {layers - 1} \(model\.layers\.{layers - 1}\."),
    ]
    for d, why in cases:
        with pytest.raises(ModelSpecError, match=f"^the weights of {d} {why}.*restore the config.json the weights were saved with") as e:
            load(d)
        one_line(e)
        assert "LOAD REPORT" not in capsys.readouterr().err
    # a tensor the model does not use (and no layer past the config's) is loaded past, with a note naming it
    d = edited("e", weights=lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(2)))
    load(d)
    err = capsys.readouterr().err
    assert f"note: 1 tensor in the weights of {d} is not part of the model and was not loaded (model.extra.weight)" in err
    assert "LOAD REPORT" not in err
    # a numbered block outside the decoder's layers (a vision tower, an extra head) is not a layer past the config's
    d = edited("f", weights=lambda sd: sd.__setitem__(f"model.vision.blocks.{layers + 5}.weight", torch.zeros(2)))
    load(d)
    assert f"note: 1 tensor in the weights of {d} is not part of the model" in capsys.readouterr().err


def test_a_tokenizer_with_ids_past_the_embedding_is_refused_before_any_forward_pass(tmp_path):
    """Another model's tokenizer beside the weights: its ids past the embedding's rows were an IndexError at the
    first forward pass (a device-side assert on a GPU). Fewer tokens than rows (a padded vocabulary) is fine."""
    from helpers import TINY_VOCAB, tiny_hf_model, tiny_tokenizer

    for vocab, refused in ((TINY_VOCAB - 59, True), (TINY_VOCAB + 61, False)):
        d = tmp_path / f"v{vocab}"
        tiny_hf_model(vocab_size=vocab, pad_token_id=0, eos_token_id=0, bos_token_id=0).save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        if refused:
            with pytest.raises(ModelSpecError, match=f"the tokenizer of {d} gives ids up to {TINY_VOCAB - 1}, but the model's "
                                                     f"embedding has {vocab} rows: the tokenizer is another model's") as e:
                load(d)
            one_line(e)
        else:
            model, tok = load(d)
            assert model.cfg.vocab_size == vocab and len(tok) == TINY_VOCAB


def test_a_tokenizer_is_judged_by_its_largest_id_and_one_without_padding_pads_with_its_end(tmp_path, tiny):
    """Ids with a gap (byte 255 at id 300): as many tokens as the embedding's rows, but id 300 past them. And a
    tokenizer without a padding token (many base models') pads with its end token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model, tok = tiny
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    gap = Tokenizer(models.BPE(vocab={c: (300 if i == 255 else i) for i, c in enumerate(alphabet)}, merges=[]))
    gap.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    gap = PreTrainedTokenizerFast(tokenizer_object=gap)
    gap.add_special_tokens({"pad_token": "<|endoftext|>", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    gap.chat_template = tok.chat_template
    assert len(gap) == model.cfg.vocab_size
    export_hf(model, gap, tmp_path / "gap")
    with pytest.raises(ModelSpecError, match=f"the tokenizer of {tmp_path / 'gap'} gives ids up to 300, but the model's "
                                             f"embedding has {model.cfg.vocab_size} rows") as e:
        load(tmp_path / "gap")
    one_line(e)
    nopad = tiny_tokenizer()
    nopad.pad_token = None
    save_model(model, nopad, tmp_path / "nopad")  # (a transformers directory: AutoTokenizer takes config.json's pad id)
    _, t = load(tmp_path / "nopad")
    assert (t.pad_token, t.pad_token_id) == ("<|im_end|>", 258)

def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path, tiny):
    model, tok = tiny
    export_hf(model, tok, tmp_path / "hf")
    cfg = tmp_path / "hf" / "tokenizer_config.json"
    import json

    c = json.loads(cfg.read_text())
    c.pop("chat_template", None)
    cfg.write_text(json.dumps(c))
    (tmp_path / "hf" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelSpecError, match="has no chat template.*add a chat_template to its tokenizer_config.json") as e:
        load(tmp_path / "hf")
    one_line(e)


def test_a_checkpoint_config_with_a_mistyped_size_is_named(tmp_path, tiny):
    import json

    save_model(*tiny, tmp_path / "ck")
    f = tmp_path / "ck" / "model_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "vocab_size": "abc"}))
    with pytest.raises(ModelSpecError, match="vocab_size must be a positive integer, got 'abc'") as e:
        load(tmp_path / "ck")
    assert str(f) in one_line(e)


def test_a_checkpoint_config_out_of_range_is_named_and_an_earlier_versions_loads(tmp_path, tiny):
    """Each check of model_config.json (a hand-edited or damaged file, or another version's): the one line names
    the file and the field, before a layer of the wrong shape is built. (tiny: 4 query heads, 2 key/value heads.)"""
    import json
    import re

    save_model(*tiny, tmp_path / "ck")
    f = tmp_path / "ck" / "model_config.json"
    good = json.loads(f.read_text())
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    for edit, says in (
        ({"arch": "gpt2"}, "unsupported architecture 'gpt2': supported are llama, qwen2"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"head_dim": True}, "head_dim must be a positive integer, got True"),
        ({"rms_norm_eps": 0}, "rms_norm_eps must be a positive number, got 0"),
        ({"rope_scaling": llama3}, "RoPE scaling 'llama3' needs numbers for original_max_position_embeddings"),
        ({"rope_scaling": {"rope_type": "linear"}}, "RoPE scaling 'linear' needs numbers for factor"),
        ({"n_kv_heads": 3}, "n_heads=4 is not a multiple of n_kv_heads=3"),
        ({"sliding_window": 4}, "checkpoint config has unknown fields ['sliding_window']: it was written by another version"),
    ):
        f.write_text(json.dumps({**good, **edit}))
        with pytest.raises(ModelSpecError, match=re.escape(says)) as e:
            load(tmp_path / "ck")
        assert str(f) in one_line(e), edit
    f.write_text(json.dumps({**good, "extra": {}}))  # a field earlier versions wrote (always {})
    model, _ = load(tmp_path / "ck")
    assert model.cfg == tiny[0].cfg

def test_a_checkpoint_without_weights_or_with_an_unknown_rope_scaling_is_named(tmp_path, tiny):
    import json

    save_model(*tiny, tmp_path / "ck")
    f = tmp_path / "ck" / "model_config.json"
    good = json.loads(f.read_text())
    for scaling, says in (({"rope_type": "weird"}, "unsupported RoPE scaling 'weird': supported are default, linear, llama3"),
                          ({"rope_type": "llama3", "factor": 8.0}, "RoPE scaling 'llama3' needs numbers for low_freq_factor")):
        f.write_text(json.dumps({**good, "rope_scaling": scaling}))
        with pytest.raises(ModelSpecError, match=says) as e:
            load(tmp_path / "ck")
        assert str(f) in one_line(e)
    f.write_text(json.dumps(good))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(ModelSpecError, match="holds a checkpoint's model_config.json but not its model.safetensors: copy") as e:
        load(tmp_path / "ck")
    one_line(e)


def test_a_directory_without_tokenizer_is_refused_before_its_weights_are_read(tmp_path, tiny):
    model, _ = tiny
    save_model(model, None, tmp_path / "ours")
    export_hf(model, None, tmp_path / "hf")
    for d in (tmp_path / "ours", tmp_path / "hf"):
        (d / "model.safetensors").write_bytes(b"not read")  # the tokenizer check comes first
        with pytest.raises(ModelSpecError, match="has no tokenizer") as e:
            load(d)
        assert "copy the tokenizer files" in one_line(e)


def test_a_tokenizer_in_other_files_than_tokenizer_json_is_read(tmp_path, tiny):
    """Byte-level BPE as vocab.json + merges.txt (no tokenizer.json, as older Qwen2 uploads): transformers reads
    it, so the early no-tokenizer check must let it through."""
    import json

    model, tok = tiny
    export_hf(model, tok, tmp_path / "bpe")
    vocab = json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())["model"]["vocab"]
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bpe" / f).unlink()
    (tmp_path / "bpe" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "bpe" / "merges.txt").write_text("#version: 0.2\n")
    _, t = load(tmp_path / "bpe")
    assert t.encode("hi 3") == tok.encode("hi 3")

def test_an_empty_spec_is_refused_by_name():
    for spec in ("", "  "):
        with pytest.raises(ModelSpecError, match=r"model spec \(--model\) is empty: leave it out for the embedded default") as e:
            load(spec)
        one_line(e)


def _one_tensor_gguf(path, arch: str) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_truncated_gguf_is_named(tmp_path):
    _one_tensor_gguf(tmp_path / "whole.gguf", "llama")
    data = (tmp_path / "whole.gguf").read_bytes()
    for name, cut in (("cut.gguf", data[: len(data) - 3000]), ("noise.gguf", os.urandom(2000))):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(ModelSpecError, match="is damaged or truncated") as e:
            load(tmp_path / name)
        assert str(tmp_path / name) in one_line(e)
    with pytest.raises(ModelSpecError, match="is damaged or truncated"):  # a shell's completion ('file.gguf/'): read as
        load(str(tmp_path / "noise.gguf") + "/")                            # the GGUF (was "a file but not a .gguf")
    # whole, but its one tensor is not the model its metadata describes (transformers 5.25 sizes the config so that
    # the embedding differs, 5.17 so that it fits and the layers are missing); and another architecture: each names
    # the file
    with pytest.raises(ModelSpecError, match=f"the weights of {tmp_path / 'whole.gguf'} (do not fit its config: "
                                             r"model\.embed_tokens\.weight is \[64, 32\] |lack \d+ of the model's tensors \(model\.layers\.0\.)"
                                             r".*download or convert the GGUF file again") as e:
        load(tmp_path / "whole.gguf")
    one_line(e)
    # another architecture: one transformers reads (phi3), or one it cannot read as GGUF at all (bert, gptneox: a
    # review found its bare ValueError, naming neither the file nor what is supported)
    for arch in ("phi3", "bert", "gptneox"):
        _one_tensor_gguf(tmp_path / f"{arch}.gguf", arch)
        with pytest.raises(ModelSpecError, match=f"^{tmp_path / arch}.gguf: unsupported architecture '{arch}'; supported are ") as e:
            load(tmp_path / f"{arch}.gguf")
        one_line(e)


def test_transformers_load_report_is_silenced_during_the_load_only(tmp_path, tiny):
    """transformers logs its LOAD REPORT (a page) when weights miss a tensor; check_loading_info says it in one line,
    so the report is silenced while the weights load, and transformers' log level is as it was after."""
    import logging

    from safetensors.torch import load_file, save_file

    export_hf(*tiny, tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    del sd["model.layers.0.mlp.down_proj.weight"]
    save_file(sd, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("transformers")
    level = log.level
    log.addHandler(handler)
    try:
        with pytest.raises(ModelSpecError, match="lack 1 of the model's tensors"):
            load(tmp_path / "hf")
    finally:
        log.removeHandler(handler)
    assert not [m for m in records if "LOAD REPORT" in m] and log.level == level

def test_qwen2_sliding_window_is_refused_only_where_a_layer_slides():
    """A review: use_sliding_window=true was refused even with max_window_layers >= the layers, where transformers
    runs every layer with full attention (its layer_types), as our model does."""
    from helpers import tiny_hf_config

    from model_io.config import ModelConfig

    n = tiny_hf_config("qwen2").num_hidden_layers
    full = tiny_hf_config("qwen2", use_sliding_window=True, max_window_layers=n, sliding_window=4)
    assert ModelConfig.from_hf(full).n_layers == n
    from helpers import tiny_hf_model

    from model_io.convert import from_hf_model

    hf = tiny_hf_model("qwen2", dtype=torch.float64, use_sliding_window=True, max_window_layers=n, sliding_window=4)
    x = torch.randint(0, 200, (1, 12))  # longer than the window: a sliding layer would differ
    with torch.no_grad():
        assert torch.allclose(from_hf_model(hf)(x), hf(x).logits, atol=1e-5)  # (as tests/test_model.py: RoPE in float32)
    slides = tiny_hf_config("qwen2", use_sliding_window=True, max_window_layers=n - 1, sliding_window=4)
    with pytest.raises(ModelSpecError, match="^Qwen2 sliding-window attention is not supported: use a checkpoint with "):
        ModelConfig.from_hf(slides)


def test_weights_holding_nan_or_inf_are_refused_as_they_load(tmp_path):
    """A CLI audit trained from a checkpoint whose weights file held 0xff bytes: every update was skipped as
    non-finite, the stop blamed the learning rate, and final_hf was exported with NaN weights."""
    import pytest
    import torch
    from helpers import tiny_hf_model, tiny_tokenizer

    from model_io import ModelSpecError, export_hf, load, save_model
    from model_io.convert import from_hf_model

    model = from_hf_model(tiny_hf_model("qwen2"))
    with torch.no_grad():
        model.layers[1].mlp.down.weight[3, 4] = float("nan")
    save_model(model, tiny_tokenizer(), tmp_path / "ours")
    with pytest.raises(ModelSpecError, match=r"ours: 1 weight tensor holds NaN or inf \(first: layers\.1\.mlp\.down\.weight\)"):
        load(str(tmp_path / "ours"))
    export_hf(model, tiny_tokenizer(), tmp_path / "hf")  # transformers' format: checked as it loads too
    with pytest.raises(ModelSpecError, match=r"hf: 1 weight tensor holds NaN or inf"):
        load(str(tmp_path / "hf"))


def test_tokenizer_files_transformers_does_not_read_are_refused(tmp_path):
    """A Qwen2 directory whose only tokenizer file is one transformers does not read for it (a *.tiktoken file, a
    WordPiece vocab.txt): AutoTokenizer hands back an empty tokenizer (one token), every prompt encoded to no ids."""
    import base64

    from helpers import tiny_hf_model, tiny_tokenizer

    model = from_hf_model(tiny_hf_model("qwen2"))
    for name, text in (("tokenizer.tiktoken", "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))),
                       ("vocab.txt", "a\nb\n")):
        d = tmp_path / name
        export_hf(model, tiny_tokenizer(), d)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).unlink()
        (d / name).write_text(text)
        with pytest.raises(ModelSpecError, match=f"^the tokenizer of {d} encodes text to no tokens: transformers read none "
                                                 "of its files for a qwen2 model") as e:
            load(d)
        one_line(e)
