"""--precision: how 'auto' resolves, the packed bf16 CPU linear, and what each command does with it."""
import copy
import json

import pytest
import torch
from conftest import gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

import model_io.linear as linear
import model_io.precision as precision
import run
from model_io import save_model
from model_io.convert import from_hf_model
from model_io.linear import Linear


def test_auto_is_bf16_where_bf16_matmuls_are_fast(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "fp32"
    assert precision.resolve_precision("auto", gpu) == "bf16"  # (a device object only: no GPU needed)
    assert precision.resolve_precision("fp32", gpu) == "fp32" and precision.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="unknown --precision 'fp16': use one of auto, fp32, bf16"):
        precision.resolve_precision("fp16", cpu)


def test_amx_detection_reads_torch_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": True}, raising=False)
    assert precision.cpu_has_fast_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True}, raising=False)
    assert not precision.cpu_has_fast_bf16()  # AVX512-BF16 alone does not make bf16 GEMMs beat float32's

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken, raising=False)
    assert not precision.cpu_has_fast_bf16()


def _linear(bias: bool) -> Linear:
    torch.manual_seed(0)
    m = Linear(24, 40, bias=bias)
    m.requires_grad_(True)  # as the policy's weights are, outside no_grad
    return m


@pytest.mark.parametrize("bias", [False, True])
def test_packed_bf16_linear_under_autocast_is_autocasts_linear(bias):
    """Under CPU bf16 autocast a packed bf16 copy replaces autocast's cast-and-multiply: same dtype, same values."""
    if not linear.BF16_PACKED:  # the plain path would be compared with itself
        pytest.skip("this CPU packs no bf16 (oneDNN needs AVX512-BF16, AMX or AVX-NE-CONVERT): the packed path never runs")
    m, x = _linear(bias), torch.randn(5, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert m._packed_dtype(x) == torch.bfloat16
        got = m(x)
        want = torch.nn.functional.linear(x, m.weight, m.bias)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    with torch.no_grad():  # an in-place update (version counter moves) remakes the copy, bias included
        m.weight.mul_(-1.0)
        if bias:
            m.bias.add_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = m(x)
            want = torch.nn.functional.linear(x, m.weight, m.bias)
    torch.testing.assert_close(after.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_packed_linear_dtypes_and_where_it_steps_aside():
    m, x = _linear(True), torch.randn(3, 24)
    with torch.no_grad():
        assert m._packed_dtype(x) == torch.float32
        mb = _linear(True).to(torch.bfloat16)
        assert mb._packed_dtype(x.bfloat16()) == (torch.bfloat16 if linear.BF16_PACKED else None)  # bf16 weights (eval --precision bf16)
        torch.testing.assert_close(mb(x.bfloat16()).float(), torch.nn.functional.linear(x.bfloat16(), mb.weight, mb.bias).float(),
                                   atol=2e-2, rtol=2e-2)
        with torch.autocast("cpu", dtype=torch.float16):
            assert m._packed_dtype(x) is None  # float16 autocast: the plain path
    assert m._packed_dtype(x) is None  # autograd needs the plain op
    with torch.no_grad():
        m(x)
        assert m._packed is not None
        linear.drop_packed(m)
        assert m._packed is None


def test_a_cpu_that_cannot_pack_bf16_runs_it_through_the_plain_matmul(monkeypatch):
    """oneDNN packs bf16 only on AVX512-BF16/AMX/AVX-NE-CONVERT CPUs: elsewhere _reorder_linear_weight raises for
    bf16 (it did, on an AVX2-only AMD EPYC), so bf16 takes F.linear there while float32 is still packed."""
    monkeypatch.setattr(linear, "BF16_PACKED", False)
    m, x = _linear(True), torch.randn(3, 24)
    mb = _linear(True).to(torch.bfloat16)
    with torch.no_grad():
        assert m._packed_dtype(x) == torch.float32 and mb._packed_dtype(x.bfloat16()) is None
        assert torch.equal(mb(x.bfloat16()), torch.nn.functional.linear(x.bfloat16(), mb.weight, mb.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m._packed_dtype(x) is None
            assert torch.equal(m(x), torch.nn.functional.linear(x, m.weight, m.bias))
        assert m._packed is None and mb._packed is None


def test_bf16_packing_is_claimed_only_where_onednn_supports_it():
    assert linear.BF16_PACKED == (linear.ENABLED and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if linear.BF16_PACKED:  # the claim holds: the reorder runs
        torch.ops.mkldnn._reorder_linear_weight(torch.randn(8, 16, dtype=torch.bfloat16), 4)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(from_hf_model(tiny_hf_model("llama")), tiny_tokenizer(), path)
    return str(path)


def test_eval_loads_the_weights_in_the_precision_and_says_so(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    seen = []
    real = run.load
    monkeypatch.setattr(run, "load", lambda *a, **k: seen.append(k["dtype"]) or real(*a, **k))
    for p in ("bf16", "fp32"):
        out = tmp_path / p
        assert run.main(["eval", "--model", tiny_ckpt, "--limit", "2", "--max-new-tokens", "4", "--batch-size", "2",
                         "--out-dir", str(out), "--device", "cpu", "--precision", p]) == 0
        assert json.loads((out / "summary.json").read_text())["precision"] == p
    assert seen == [torch.bfloat16, torch.float32]


def test_train_records_the_resolved_precision_and_old_runs_resume_in_float32(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """The run's config.json holds what 'auto' resolved to here (a resume on another machine keeps it); a run
    directory from before --precision resumes as it ran then (float32 on a CPU)."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_ckpt, "--steps", "2", "--prompts-per-step", "1", "--group-size", "2",
            "--max-new-tokens", "4", "--eval-every", "0", "--save-every", "1", "--out-dir", str(out), "--device", "cpu"]
    assert run.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["precision"] == "bf16"
    del cfg["precision"]
    cfg["steps"] = 3  # (a step left to take; the checkpoints' copies of the config say the same, as a real old run's would)
    for f in [out / "config.json", *(out / "checkpoints").glob("step-*/train_config.json")]:
        f.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 0
    printed = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("config: "))
    assert json.loads(printed[len("config: "):])["precision"] == "fp32"
    # resumed again: config.json (not rewritten: nothing changed) still lacks the field its new checkpoint has
    # (a review: the second resume was refused, "config.json was edited")
    assert "precision" not in json.loads((out / "config.json").read_text())
    newest = out / "checkpoints" / "step-000003" / "train_config.json"
    assert json.loads(newest.read_text())["precision"] == "fp32"
    for f, c in ((out / "config.json", cfg), (newest, json.loads(newest.read_text()))):
        f.write_text(json.dumps({**c, "steps": 4}))
    assert run.main(["train", "--resume", str(out)]) == 0
    printed = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("config: "))
    assert json.loads(printed[len("config: "):])["precision"] == "fp32"
    # a field deleted from config.json by hand takes the newest checkpoint's value, not its default (256 tokens
    # where the run had 4)
    newest = out / "checkpoints" / "step-000004" / "train_config.json"
    for f, c in ((out / "config.json", {k: v for k, v in cfg.items() if k != "max_new_tokens"}), (newest, json.loads(newest.read_text()))):
        f.write_text(json.dumps({**c, "steps": 5}))
    assert run.main(["train", "--resume", str(out)]) == 0
    printed = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("config: "))
    assert json.loads(printed[len("config: "):])["max_new_tokens"] == 4


def test_precision_benchmark_side_runs_and_reports(tiny_ckpt, monkeypatch):
    """bench/precision.py's per-precision process, on a tiny model: GRPO steps and a greedy decode, timed."""
    import argparse
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_precision", ROOT / "bench" / "precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = argparse.Namespace(model=tiny_ckpt, prompts=1, group=2, max_new_tokens=4, shots=0, decode_rows=2, warmup=0,
                           steps=2, seed=0, gsm8k=gsm8k_dir(), side="bf16")
    out = bench.run_side(a)
    assert len(out["steps"]) == 2 and all(s["seconds"] > 0 and 0 < s["tokens"] <= 2 * 4 for s in out["steps"])
    assert out["decode_tokens_per_s"] > 0 and out["peak_rss_mb"] > 0


def test_bf16_reference_model_stores_its_linears_in_bf16_with_the_same_log_probs(tmp_path):
    """GRPO's frozen reference at precision bf16: linear weights stored as autocast would cast them (bf16), head,
    embedding and norms float32; its teacher-forced log-probs under autocast equal those of the float32-stored
    model bitwise. At fp32 and for weights that require grad nothing is cast."""
    from helpers import make_trainer

    from model_io import token_logprobs

    tr = make_trainer(tmp_path, beta=0.04, precision="bf16")
    ref, policy = tr.ref, tr.model
    assert ref.layers[0].attn.qkv.weight.dtype == ref.layers[-1].mlp.down.weight.dtype == torch.bfloat16
    assert ref.lm_head.weight.dtype == ref.embed.weight.dtype == ref.norm.weight.dtype == torch.float32
    assert ref.layers[0].attn_norm.weight.dtype == torch.float32
    assert policy.layers[0].attn.qkv.weight.dtype == torch.float32  # the policy's master weights are untouched
    x = torch.randint(0, policy.cfg.vocab_size, (3, 12))
    plain = copy.deepcopy(policy).requires_grad_(False)  # still the reference's starting weights, float32
    linear.set_packed(plain, False)  # the plain F.linear under autocast, as the reference runs (no packed copies)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = token_logprobs(plain, x)
        got = token_logprobs(ref, x)
    assert want.dtype == got.dtype == torch.float32
    assert torch.equal(got, want)
    assert make_trainer(tmp_path / "fp32", beta=0.04).ref.layers[0].attn.qkv.weight.dtype == torch.float32
    with pytest.raises(AssertionError, match="frozen"):
        precision.store_frozen_linears_in(policy, "bf16")


def test_bf16_on_a_cpu_without_amx_says_it_is_slow(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """bf16 asked for on a CPU without AMX-BF16 (or kept by a run resumed there) runs, with one line saying it is
    slow there and what is faster; with AMX, or at fp32, nothing is said."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    cpu = torch.device("cpu")
    for fast in (False, True):
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
        assert (precision.slow_bf16_note("bf16", cpu) is None) == fast
        assert precision.slow_bf16_note("fp32", cpu) is None and precision.slow_bf16_note("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    small = ["--max-new-tokens", "4", "--device", "cpu", "--model", tiny_ckpt]
    argvs = {"eval": ["eval", "--limit", "2", "--batch-size", "2", "--out-dir", str(tmp_path / "e")],
             "sample": ["sample", "--limit", "1", "--shots", "0"],
             "train": ["train", "--steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--micro-batch", "2",
                       "--eval-every", "0", "--out-dir", str(tmp_path / "t")]}
    for cmd, argv in argvs.items():
        for p in ("bf16", "fp32"):
            out = [str(tmp_path / f"{cmd}-{p}") if x.startswith(str(tmp_path)) else x for x in argv]
            assert run.main(out + small + ["--precision", p]) == 0
            err = capsys.readouterr().err
            said = [line for line in err.splitlines() if line.startswith("note: bf16 on a CPU without AMX-BF16")]
            assert len(said) == (p == "bf16"), (cmd, p, err[-500:])
    # a run recorded in bf16 (on an AMX machine, say) and resumed here says it too
    part = str(tmp_path / "part")
    assert run.main(argvs["train"][:-1] + [part, "--steps", "2", "--save-every", "1", "--max-minutes", "1e-6"] + small
                    + ["--precision", "bf16"]) == 0  # stops after step 1: its time is up
    capsys.readouterr()
    assert run.main(["train", "--resume", part]) == 0
    err = capsys.readouterr().err
    steps = [json.loads(line).get("step") for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2 and json.loads((tmp_path / "part" / "config.json").read_text())["precision"] == "bf16"
    assert sum(line.startswith("note: bf16 on a CPU without AMX-BF16") for line in err.splitlines()) == 1, err[-500:]


def test_a_frozen_linear_passes_gradients_to_its_input():
    """A frozen layer (GRPO's reference, or the policy's frozen parts) under autograd with an input that needs
    gradients: the plain matmul, so the input gets its gradient (the packed op has no backward)."""
    m = _linear(True).requires_grad_(False)
    x = torch.randn(3, 24, requires_grad=True)
    y = m(x)
    assert y.requires_grad
    (g,) = torch.autograd.grad(y.square().sum(), x)
    xr = x.detach().requires_grad_(True)
    (want,) = torch.autograd.grad(torch.nn.functional.linear(xr, m.weight, m.bias).square().sum(), xr)
    assert torch.allclose(g, want, atol=1e-5)


def test_one_linear_called_in_float32_and_under_bf16_autocast():
    """Sampling runs a model under bf16 autocast and evaluation without: one layer, packed in float32 by one call,
    packs again in bf16 for the other, each giving what F.linear gives there."""
    m, x = _linear(True), torch.randn(5, 24)
    with torch.no_grad():
        plain = m(x)
        assert plain.dtype == torch.float32 and torch.allclose(plain, torch.nn.functional.linear(x, m.weight, m.bias), atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = m(x), torch.nn.functional.linear(x, m.weight, m.bias)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
        assert torch.allclose(m(x), plain)  # and back


def test_a_bias_changed_in_place_alone_is_seen_by_the_packed_linear():
    """The packed copy carries the bias (a bf16 copy under bf16 autocast): an optimizer step that moves only the
    bias (in place) must reach it."""
    m, x = _linear(True), torch.randn(3, 24)
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            m(x)
            m.bias.add_(1.0)
            got, want = m(x), torch.nn.functional.linear(x, m.weight, m.bias)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_the_packed_linear_keeps_f_linears_dtype_rules():
    """Packed or plain, a call whose input dtype is not the weight's (outside autocast) is refused as F.linear
    refuses it: the CPU's packed path does not quietly cast what a GPU or autograd would reject."""
    m, x = _linear(False), torch.randn(3, 24)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            torch.nn.functional.linear(x.bfloat16(), m.weight)
        with pytest.raises(RuntimeError):
            m(x.bfloat16())


def test_add_into_with_a_bias_adds_it(monkeypatch):
    """Linear.add_into folds the residual into the matmul only where the layer has no bias (addmm has room for one
    addend): with a bias, forced onto the CPU's GPU path, it is still residual + the layer's output, bias included."""
    monkeypatch.setattr(linear, "RESIDUAL_IN_GEMM", ("cpu",))
    m = _linear(True)
    with torch.no_grad():
        m.bias.fill_(3.0)
        x, r = torch.randn(2, 4, 24), torch.randn(2, 4, 40)
        assert torch.allclose(m.add_into(r, x), r + torch.nn.functional.linear(x, m.weight, m.bias), atol=1e-5)


def test_unpacked_restores_each_layers_own_setting():
    """Within `unpacked` no layer makes a packed copy; after it each layer is as it was: one allowed packs again,
    one forbidden by set_packed (GRPO's reference) still does not."""
    on, off, x = _linear(True), _linear(True), torch.randn(3, 24)
    linear.set_packed(off, False)
    model = torch.nn.Sequential(on, off)
    with torch.no_grad():
        with linear.unpacked(model):
            on(x), off(x)
            assert on._packed is None and off._packed is None
        on(x), off(x)
    assert on._packed is not None and off._packed is None
