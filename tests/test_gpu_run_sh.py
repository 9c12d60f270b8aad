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


def gpu_run(tmp_path, minutes: int, has_pytest: bool = True, **env_extra):
    tmp_path.mkdir(exist_ok=True)
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    # a clock that stands still (`date +%s`; any other `date` is the real one): the limits the script works out
    # depend on the seconds gone, which on a loaded machine could be several (a review)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("date", CLOCK_BIN["date"]), ("timeout", RECORDING_TIMEOUT)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    (tmp_path / "clock").write_text("1000000\n")
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": str(int(has_pytest)),
           "CLOCK": str(tmp_path / "clock"), "LIMITS": str(tmp_path / "limits"), "PATH": f"{bin_}:{os.environ['PATH']}"}
    env.pop("SMALL", None)
    env.update(env_extra)
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
    # with time to spare, each step's own limit (training: the minutes less what follows it, plus its 40 s)
    assert [int(c.split()[0]) for c in (tmp_path / "limits").read_text().splitlines()] == [
        240, 120, 90, 150, 3470, 150, 90, 240, 120, 60, 60, 180, 120, 90, 90, 120, 120]
    # the summary rewritten after every step: a run cut off later still has one
    assert calls.count(f"scripts/gpu_summary.py {tmp_path / 'out'}") == len(steps)


def test_without_time_the_figures_still_run_and_the_diagnostics_are_skipped(tmp_path):
    p, steps, _ = gpu_run(tmp_path, 0, has_pytest=False)
    assert p.returncode == 0, p.stderr
    assert steps == ["1-env", "2-sampler-b64", "2-sampler-b256", "2-agreement", "3-eval-start", "4-train skipped: no time left",
                     "4-nccl", "5-compare", "1-cuda-tests skipped: no pytest here", "2-agreement-fp32 skipped: no time left",
                     "2-attention skipped: no time left",
                     "2-decode-ops skipped: no time left",
                     "2-group-sampling skipped: no time left", "4-train-profile skipped: no time left", "4-train-mb64 skipped: no time left",
                     "5-mcts-static, 5-mcts-dynamic skipped: no time left for the pair"]
    # each step still gets 30 s (`timeout` refuses a limit of 0 or less: the step would not run at all)
    assert [int(c.split()[0]) for c in (tmp_path / "limits").read_text().splitlines()] == [30] * 6
    # 3 minutes leave 10 s for training steps after its 130 s + 40 s: under the 60 s it needs, it is skipped
    _, steps, _ = gpu_run(tmp_path / "three", 3)
    assert "4-train skipped: no time left" in steps and "4-eval-trained" not in steps


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
    limited = (tmp_path / "limits").read_text().splitlines()
    train = next(c for c in limited if "run.py train" in c and "--max-minutes" in c)
    assert float(re.search(r"--max-minutes (\S+) ", train).group(1)) >= 1.0
    # each step's limit: what is left less what the later steps keep (30 s at least): samplers 100 and 60 s, the
    # agreement 60, the first evaluation its 30 s floor, training 60 s + 40 s of its own start and end, the trained
    # model's evaluation 45 s, the NCCL check 30, the grid what is left
    assert [int(c.split()[0]) for c in limited] == [100, 60, 60, 30, 100, 45, 30, 55]
    raw = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    assert raw[0].startswith("1-env rc=0 ") and raw[1].startswith("2-sampler-b64 rc=124 seconds=100")  # cut off: said so
    assert int((tmp_path / "clock").read_text()) - 1000000 <= 8 * 60  # every limit together within MINUTES


RECORDING_TIMEOUT = """#!/usr/bin/env bash
echo "$*" >> "$LIMITS"  # the limit, then the command, which runs
shift; exec "$@"
"""


def test_steps_runs_only_the_named_steps(tmp_path):
    """STEPS (name prefixes): a second run on a warm machine for the figures a first one did not reach."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "timeout").write_text(RECORDING_TIMEOUT)
    (bin_ / "timeout").chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": "1",
           "STEPS": "2-sampler-b64 1-cuda 5-mcts", "LIMITS": str(tmp_path / "limits"), "PATH": f"{bin_}:{os.environ['PATH']}"}
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
    # nothing kept for training it will not run: the sampler step gets the 5 minutes less the 150 s the next
    # three steps keep (with training's 230 s kept too it would have had its 30 s floor)
    assert any(c.startswith("bench/sampler.py") and "--compiled" in c for c in calls)
    limit, rest = (tmp_path / "limits").read_text().splitlines()[0].split(" ", 1)
    assert rest.startswith(f"{fake} bench/sampler.py ")  # 150 s, less the wall-clock seconds 1-env took (on a busy
    assert 147 <= int(limit) <= 150, limit                 # machine one or two: the test failed there at 149)
    env["STEPS"] = "4-train"  # training brings its evaluation along (and, a prefix, the micro-batch diagnostic)
    (tmp_path / "out" / "steps.txt").unlink()
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(tmp_path / "out"), "5"],
                       env=env, capture_output=True, text=True, timeout=120)
    steps = [s.split(" rc=")[0] for s in (tmp_path / "out" / "steps.txt").read_text().splitlines()]
    assert steps == ["1-env", "4-train", "4-eval-trained", "4-train-profile", "4-train-mb64"]


def test_the_tree_search_pair_needs_a_minute_and_the_first_keeps_30_s_for_the_second(tmp_path):
    """With a clock that moves only where the stand-in python says: 1-env takes 15 s of a 1-minute run, which
    leaves 45 s, under the pair's minute; with 2 minutes, the static side is limited to 90 s so that 30 s stay."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("date", CLOCK_BIN["date"]), ("timeout", RECORDING_TIMEOUT)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE.replace('exit 0\n', 'if [ "$1" = scripts/gpu_env.py ]; then echo $(( $(cat "$CLOCK") + SLOW_ENV )) > "$CLOCK"; fi\n'))
    fake.chmod(0o755)
    for minutes, slow_env in ((1, 15), (2, 0)):
        (tmp_path / "clock").write_text("1000000\n")
        out = tmp_path / f"out{minutes}"
        env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "HAS_PYTEST": "1", "STEPS": "5-mcts",
               "CLOCK": str(tmp_path / "clock"), "SLOW_ENV": str(slow_env), "LIMITS": str(tmp_path / f"limits{minutes}"),
               "PATH": f"{bin_}:{os.environ['PATH']}"}
        env.pop("SMALL", None)
        p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(out), str(minutes)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        steps = [s.split(" rc=")[0] for s in (out / "steps.txt").read_text().splitlines()]
        if minutes == 1:
            assert steps == ["1-env", "5-mcts-static, 5-mcts-dynamic skipped: no time left for the pair"]
        else:
            assert steps == ["1-env", "5-mcts-static", "5-mcts-dynamic"]
            limits = [(c.split()[0], f"--decode {mode}" in c) for c, mode in zip((tmp_path / "limits2").read_text().splitlines(), ("static", "dynamic"))]
            assert limits == [("90", True), ("120", True)]


def test_small_shrinks_every_size(tmp_path):
    """SMALL=1: the script's CPU rehearsal, every batch, question count and length cut down."""
    p, _, calls = gpu_run(tmp_path, 60, SMALL="1")
    assert p.returncode == 0, p.stderr
    assert "bench/sampler.py --model MODEL --batch 4 --max-new-tokens 16 --compiled" in calls
    assert any(c.startswith("run.py eval --model MODEL --shots 2 --limit 4 --max-new-tokens 16 ") for c in calls)
    assert any(c.startswith("bench/compare.py") and "--limit 2 --n 1,4,8 --sims 1 " in c for c in calls)


def test_bad_minutes_or_an_out_dir_that_is_a_file_are_one_line_before_any_step(tmp_path):
    """Seen in a fuzz: MINUTES "abc" or "1.5" gave ~32 bash errors and then ran every step with a 30 s limit (exit 0);
    an OUT_DIR that is a file ran every step into "Not a directory"."""
    env = {**os.environ, "PYTHON": "false"}  # (nothing may run)
    (tmp_path / "file").write_text("mine\n")
    for out, minutes, says in ((tmp_path / "o", "abc", "MINUTES must be a whole number of minutes (0 runs each step at its 30 s floor), got 'abc'"),
                               (tmp_path / "o", "1.5", "MINUTES must be a whole number of minutes (0 runs each step at its 30 s floor), got '1.5'"),
                               (tmp_path / "file", "5", f"cannot write into OUT_DIR '{tmp_path / 'file'}' (a file there, or "
                                                        "no permission): pass a directory")):
        p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "MODEL", str(out), minutes],
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr == f"error: {says}\n" and not p.stdout, p
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine\n"
