"""scripts/gpu_env.py's command line (argparse: no file named after a flag) and its rounding; nothing measured."""
import importlib.util

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_env", ROOT / "scripts" / "gpu_env.py")
gpu_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_env)


def test_help_and_missing_or_unwritable_out_measure_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_env, "measure", lambda out: pytest.fail(f"measured into {out}"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        gpu_env.main(["--help"])
    assert e.value.code == 0 and "usage: " in capsys.readouterr().out and not list(tmp_path.iterdir())
    for argv, says in (([], "the following arguments are required: OUT"),
                       ([str(tmp_path / "no" / "env.json")], f"no directory {tmp_path / 'no'} for")):
        with pytest.raises(SystemExit) as e:
            gpu_env.main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_rates_keep_three_significant_figures():
    assert gpu_env.significant(0.0386412) == 0.0386  # a CPU's float32 matmul, once printed as 0.0
    assert gpu_env.significant(712.46) == 712.0 and gpu_env.significant(1234.5) == 1230.0
    assert gpu_env.significant(0.0) == 0.0


def test_toolchain_names_the_compiler_torch_compile_would_find(monkeypatch):
    monkeypatch.setattr(gpu_env.shutil, "which", lambda c: "/usr/bin/gcc" if c == "gcc" else None)
    assert gpu_env.toolchain()["c_compiler"] == "/usr/bin/gcc"
    monkeypatch.setattr(gpu_env.shutil, "which", lambda c: None)
    assert gpu_env.toolchain()["c_compiler"] is None


def test_first_calls_time_a_decode_and_a_training_attention_on_cpu():
    t = gpu_env.first_calls(gpu_env.torch.device("cpu"))
    assert set(t) == {"first_attention_decode_s", "first_attention_train_s"} and all(x > 0 for x in t.values())
