"""scripts/gpu_run.sh's order and time limits, with a stand-in for python that only records its calls: nothing
runs. The GPU figures come first; training gets the minutes the others leave; diagnostics run only while time is
left (a lent machine's minutes are few, and a step past them would be cut off with the rest)."""
import os
import re
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
    # a clock that stands still (`date +%s`; any other `date` is the real one): the limits the script works out
    # depend on the seconds gone, which on a loaded machine could be several (a review)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "date").write_text(CLOCK_BIN["date"])
    (bin_ / "date").chmod(0o755)
    (tmp_path / "clock").write_text("1000000\n")
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": str(int(has_pytest)),
           "CLOCK": str(tmp_path / "clock"), "PATH": f"{bin_}:{os.environ['PATH']}"}
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
                     "4-nccl", "5-compare", "1-cuda-tests", "2-agreement-fp32", "2-attention", "2-decode-ops", "2-group-sampling", "4-train-profile", "4-train-mb64", "5-mcts-static",
                     "5-mcts-dynamic"]
    train = next(c for c in calls if c.startswith("run.py train") and "--max-minutes" in c)
    # 60 minutes less the 130 s kept for what follows and the 40 s of the run's own start and end, less the seconds
    # gone (none: the clock stands still), as a fraction of a minute: 3430 s
    assert re.search(r"--max-minutes (\S+) ", train).group(1) == "57.166"
    assert any("--decode static" in c and "--search mcts --limit 16" in c for c in calls)
    assert calls[-1].startswith("scripts/gpu_summary.py") and calls[-1].endswith("--print")


def test_without_time_the_figures_still_run_and_the_diagnostics_are_skipped(tmp_path):
    p, steps, _ = gpu_run(tmp_path, 0, has_pytest=False)
    assert p.returncode == 0, p.stderr
    assert steps == ["1-env", "2-sampler-b64", "2-sampler-b256", "2-agreement", "3-eval-start", "4-train skipped: no time left",
                     "4-nccl", "5-compare", "1-cuda-tests skipped: no pytest here", "2-agreement-fp32 skipped: no time left",
                     "2-attention skipped: no time left",
                     "2-decode-ops skipped: no time left",
                     "2-group-sampling skipped: no time left", "4-train-profile skipped: no time left", "4-train-mb64 skipped: no time left",
                     "5-mcts-static, 5-mcts-dynamic skipped: no time left for the pair"]


CLOCK_BIN = {  # a clock that moves only when a step runs: each time-limited step takes its whole limit (the worst case)
    "date": """#!/usr/bin/env bash
if [ "$1" = +%s ]; then cat "$CLOCK"; else exec /bin/date "$@"; fi
""",
    "timeout": """#!/usr/bin/env bash
echo "$*" >> "$LIMITS"  # the limit, then the command it would have run
echo $(( $(cat "$CLOCK") + $1 )) > "$CLOCK"
exit 124
""",
}


def test_when_every_step_runs_to_its_limit_training_still_runs_within_the_minutes(tmp_path):
    """MINUTES 8, the default: a slow sampler, evaluation or compile (each cut off at its limit) must not leave
    training skipped, and the steps' limits together must fit in the minutes."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in CLOCK_BIN.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    (tmp_path / "clock").write_text("1000000\n")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": "1",
           "CLOCK": str(tmp_path / "clock"), "LIMITS": str(tmp_path / "limits"), "PATH": f"{bin_}:{os.environ['PATH']}"}
    env.pop("SMALL", None)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(tmp_path / "out"), "8"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    steps = [s.split(" rc=")[0] for s in (tmp_path / "out" / "steps.txt").read_text().splitlines()]
    assert steps[:9] == ["1-env", "2-sampler-b64", "2-sampler-b256", "2-agreement", "3-eval-start", "4-train",
                         "4-eval-trained", "4-nccl", "5-compare"]
    assert all("skipped" in s for s in steps[9:])  # no time left for the diagnostics
    train = next(c for c in (tmp_path / "limits").read_text().splitlines() if "run.py train" in c and "--max-minutes" in c)
    assert float(re.search(r"--max-minutes (\S+) ", train).group(1)) >= 1.0
    assert int((tmp_path / "clock").read_text()) - 1000000 <= 8 * 60  # every limit together within MINUTES


def test_steps_runs_only_the_named_steps(tmp_path):
    """STEPS (name prefixes): a second run on a warm machine for the figures a first one did not reach."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": "1",
           "STEPS": "2-sampler-b64 1-cuda 5-mcts"}
    env.pop("SMALL", None)
    for d in ("mcts-static", "eval-start"):  # a first run's outputs, one of them an eval cut short by its limit
        (tmp_path / "out" / d).mkdir(parents=True)
        (tmp_path / "out" / d / "predictions.jsonl.partial").write_text("{}\n")
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(tmp_path / "out"), "5"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    steps = [s.split(" rc=")[0] for s in (tmp_path / "out" / "steps.txt").read_text().splitlines()]
    assert steps == ["1-env", "2-sampler-b64", "1-cuda-tests", "5-mcts-static", "5-mcts-dynamic"]  # (the card's name)
    # a step run again measures again, on an empty directory (eval refuses an interrupted eval's); others are kept
    assert not (tmp_path / "out" / "mcts-static" / "predictions.jsonl.partial").exists()
    assert (tmp_path / "out" / "eval-start" / "predictions.jsonl.partial").exists()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any("run.py train" in c for c in calls)
    # nothing kept for training it will not run: the sampler step gets its whole 240 s
    assert any(c.startswith("bench/sampler.py") and "--compiled" in c for c in calls)
    env["STEPS"] = "4-train"  # training brings its evaluation along (and, a prefix, the micro-batch diagnostic)
    (tmp_path / "out" / "steps.txt").unlink()
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(tmp_path / "out"), "5"],
                       env=env, capture_output=True, text=True, timeout=120)
    steps = [s.split(" rc=")[0] for s in (tmp_path / "out" / "steps.txt").read_text().splitlines()]
    assert steps == ["1-env", "4-train", "4-eval-trained", "4-train-profile", "4-train-mb64"]
