"""scripts/plot_runs.py: runs with the same directory name stay apart, and OUT may be in a new directory."""
import importlib.util
import json

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("plot_runs", ROOT / "scripts" / "plot_runs.py")
plot_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_runs)


def run_dir(path, reward: float):
    path.mkdir(parents=True)
    rows = [{"step": i, "reward": reward, "rollout/generated_tokens_total": 100 * i} for i in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_runs_named_alike_are_told_apart_by_their_paths(tmp_path, capsys):
    a, b = run_dir(tmp_path / "a" / "plain", 0.25), run_dir(tmp_path / "b" / "plain", 0.75)
    assert plot_runs.labels([tmp_path / "a" / "plain", tmp_path / "b" / "plain", tmp_path / "mcts"]) == [
        "a/plain", "b/plain", "mcts"]
    out = tmp_path / "new" / "dir" / "curves.png"  # its directory does not exist yet
    plot_runs.main([str(out), a, b])
    table = (tmp_path / "new" / "dir" / "curves.md").read_text()
    assert "| a/plain | 2 | 200 | 0.250 | 0.250 | - | - |" in table
    assert "| b/plain | 2 | 200 | 0.750 | 0.750 | - | - |" in table


def test_the_same_run_twice_is_refused(tmp_path):
    a = run_dir(tmp_path / "plain", 0.5)
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(tmp_path / "c.png"), a, a + "/"])
    assert e.value.code == "error: a run directory is given twice: pass each run once"


def test_help_prints_the_usage_and_exits_0(capsys):
    plot_runs.main(["-h"])  # returns: exit 0, no file named -h written
    assert "plot_runs.py OUT/curves.png" in capsys.readouterr().out
