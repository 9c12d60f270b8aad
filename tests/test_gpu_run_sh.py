"""scripts/gpu_run.sh's order and time limits, with a stand-in for python that only records its calls: nothing
runs. The GPU figures come first; training gets the minutes the others leave; diagnostics run only while time is
left (a lent machine's minutes are few, and a step past them would be cut off with the rest)."""
import os
import subprocess

from conftest import ROOT

FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = -c ]; then [ "$HAS_PYTEST" = 1 ]; exit; fi  # the script's "import pytest" probe
exit 0
"""


def gpu_run(tmp_path, minutes: int, has_pytest: bool = True):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": str(int(has_pytest))}
    env.pop("SMALL", None)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(tmp_path / "out"), str(minutes)],
                       env=env, capture_output=True, text=True, timeout=120)
    steps = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    calls = (tmp_path / "calls").read_text().splitlines()
    return p, [s.split(" rc=")[0] if " rc=" in s else s for s in steps], calls


def test_with_time_every_step_runs_in_order(tmp_path):
    p, steps, calls = gpu_run(tmp_path, 60)
    assert p.returncode == 0, p.stderr
    assert steps == ["1-env", "2-sampler-b64", "2-sampler-b256", "2-agreement", "3-eval-start", "4-train", "4-eval-trained",
                     "4-nccl", "5-compare", "1-cuda-tests", "2-attention", "2-decode-ops", "2-group-sampling", "5-mcts-static",
                     "5-mcts-dynamic"]
    train = next(c for c in calls if c.startswith("run.py train") and "--max-minutes" in c)
    # 60 minutes less the 3 kept for what follows, less the seconds gone, in whole minutes
    assert "--max-minutes 57 " in train or "--max-minutes 56 " in train
    assert any("--decode static" in c and "--search mcts --limit 16" in c for c in calls)
    assert calls[-1].startswith("scripts/gpu_summary.py") and calls[-1].endswith("--print")


def test_without_time_the_figures_still_run_and_the_diagnostics_are_skipped(tmp_path):
    p, steps, _ = gpu_run(tmp_path, 0, has_pytest=False)
    assert p.returncode == 0, p.stderr
    assert steps == ["1-env", "2-sampler-b64", "2-sampler-b256", "2-agreement", "3-eval-start", "4-train skipped: no time left",
                     "4-nccl", "5-compare", "1-cuda-tests skipped: no pytest here", "2-attention skipped: no time left",
                     "2-decode-ops skipped: no time left",
                     "2-group-sampling skipped: no time left",
                     "5-mcts-static, 5-mcts-dynamic skipped: no time left for the pair"]
