"""The bench scripts' command lines: bad input is one line naming the flag, before any model loads."""
import importlib.util

import pytest
import torch
from conftest import ROOT, gsm8k_dir


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def refused(name: str, argv: list[str], capsys) -> str:
    """The one error line a bench script gives for `argv` (argparse: exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as e:
        bench(name).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("name,argv,says", [
    ("sampler", ["--batch", "0"], "--batch must be >= 1, got 0"),
    ("sampler", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ("sampler", ["--device", "foo"], "unknown --device 'foo'"),
    ("sampler", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("sampler", ["--gsm8k", "/nonexistent", "--device", "cpu"], "GSM8K file /nonexistent not found"),
    ("mcts", ["--batch", "0"], "--batch must be >= 1, got 0"),
    ("mcts", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("agreement", ["--tokens", "0"], "--tokens must be >= 1, got 0"),
    ("agreement", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("decode_ops", ["--batch", "-1"], "--batch must be >= 1, got -1"),
    ("grpo_step", ["--micro-batch", "0"], "--micro-batch must be >= 1, got 0"),
    ("grpo_step", ["--gsm8k", "/nonexistent"], "GSM8K file /nonexistent not found"),
    ("precision", ["--decode-rows", "0"], "--decode-rows must be >= 1, got 0"),
])
def test_bad_input_is_one_line_naming_it(name, argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    argv = [str(tmp_path / "out") if x == "OUT" else x for x in argv]
    assert says in refused(name, argv, capsys)


def test_cuda_asked_for_where_there_is_none(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused("sampler", ["--device", "cuda"], capsys)
    assert line.endswith("error: --device cuda asked for but CUDA is not available here: use --device cpu")
