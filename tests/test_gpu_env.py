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
    (tmp_path / "file").write_text("")
    for argv, says in (([], "the following arguments are required: OUT"),
                       ([str(tmp_path / "no" / "env.json")], f"no directory {tmp_path / 'no'} for"),
                       ([str(tmp_path / "file" / "env.json")], f"no directory {tmp_path / 'file'} for"),  # a file, not a directory
                       # refused before the measurement, not an IsADirectoryError after it (a fuzz)
                       ([str(tmp_path)], f"OUT {str(tmp_path)!r} is a directory: give the JSON file to write"),
                       ([""], "OUT '' is empty: give the JSON file to write")):
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
    monkeypatch.setattr(gpu_env.shutil, "which", lambda c: f"/usr/bin/{c}")
    assert gpu_env.toolchain()["c_compiler"] == "/usr/bin/cc"  # the first of the names, as a build finds it
    monkeypatch.setattr(gpu_env.shutil, "which", lambda c: None)
    assert gpu_env.toolchain()["c_compiler"] is None


def test_first_calls_time_a_decode_and_a_training_attention_on_cpu():
    t = gpu_env.first_calls(gpu_env.torch.device("cpu"))
    assert set(t) == {"first_attention_decode_s", "first_attention_train_s"} and all(x > 0 for x in t.values())


def test_measure_writes_what_it_prints_in_decimal_units(tmp_path, monkeypatch, capsys):
    """On this CPU, with the copy bandwidth given and a clock that moves 1 s a reading: bytes a second in GB (1e9,
    not GiB), the traffic twice the copy, and the 10 timed float32 matmuls of 1024 x 1024 in TFLOP/s."""
    import json

    monkeypatch.setattr(gpu_env.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_env, "copy_bandwidth", lambda dev, reps: 12.5e9)
    clock = iter(range(1000))
    monkeypatch.setattr(gpu_env.time, "perf_counter", lambda: float(next(clock)))
    gpu_env.measure(str(tmp_path / "env.json"))
    info = json.loads((tmp_path / "env.json").read_text())
    assert json.loads(capsys.readouterr().out) == info
    assert info["device"] == "cpu" and info["memory_gib"] is None and info["copy_gb_per_s"] == 12.5
    assert info["memory_traffic_gb_per_s"] == 25.0 and info["first_attention_decode_s"] == 1.0
    assert info["matmul_tflops_float32"] == 0.0215  # 2 x 1024^3 x 10 flops in 1 s
