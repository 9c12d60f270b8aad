"""scripts/experiment.sh's command line, paths and resume, with a stand-in for python that only records its
calls (and writes the files the next steps read): nothing is trained."""
import os
import subprocess
import sys

from conftest import ROOT

FAKE = """#!/usr/bin/env bash
echo "GSM8K_DIR=$GSM8K_DIR $*" >> "$CALLS"
if [ "$1" = -c ]; then exec "$REAL_PY" "$@"; fi
if [ "$1" = scripts/plot_runs.py ]; then echo "| curves |" > "${2%.png}.md"; fi
if [ "$1 $2" = "run.py eval" ]; then
  while [ $# -gt 0 ]; do if [ "$1" = --out-dir ]; then out=$2; fi; shift; done
  mkdir -p "$out"
  echo '{"accuracy_strict": 0, "accuracy_lenient": 0, "format_soft_rate": 1, "generated_tokens_per_question": 9}' > "$out/summary.json"
fi
"""


def experiment(tmp_path, *args, **env_extra):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "REAL_PY": sys.executable, "GSM8K_DIR": "g"}
    env.pop("MODEL", None)
    env.update(env_extra)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "experiment.sh"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return p, [c for c in calls if " run.py train " in f" {c} "]


def test_help_and_bad_arguments_print_usage_and_touch_nothing(tmp_path):
    p, _ = experiment(tmp_path, "--help")
    assert p.returncode == 0 and "bash scripts/experiment.sh --gpu [OUT_DIR]" in p.stdout and not p.stderr
    p, _ = experiment(tmp_path, "--bogus")
    assert p.returncode == 2 and p.stderr.strip() == "error: unknown option --bogus: use --gpu, or -h for help"
    p, _ = experiment(tmp_path, "")  # (it ran into runs/experiment, as if none had been given)
    assert p.returncode == 2 and p.stderr.strip() == "error: OUT_DIR is empty: give a directory, or leave it out for runs/experiment"
    p, _ = experiment(tmp_path, "a", "b")
    assert p.returncode == 2 and p.stderr.strip() == "error: one OUT_DIR at most (got a and b): see -h"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["fake-python"]


def test_relative_paths_are_the_callers_and_an_interrupted_run_resumes(tmp_path):
    out = tmp_path / "rel"
    (out / "plain" / "checkpoints" / "step-000004").mkdir(parents=True)
    (out / "plain" / "checkpoints" / "step-000004" / "trainer_state.pt").write_bytes(b"")
    (out / "mcts").mkdir()
    (out / "mcts" / "metrics.jsonl").write_text("{}\n")  # stopped before its first checkpoint
    (out / "eval-plain-mcts").mkdir()
    (out / "eval-plain-mcts" / "predictions.jsonl.partial").write_text("{}\n")  # an eval cut short
    p, train = experiment(tmp_path, "rel")
    assert p.returncode == 0, p.stderr
    assert train[0] == f"GSM8K_DIR={tmp_path}/g run.py train --resume {out}/plain"
    assert train[1].startswith(f"GSM8K_DIR={tmp_path}/g run.py train --shots 2 ")
    assert train[1].endswith(f"--seed 0 --out-dir {out}/mcts")
    # left to run.py train, which starts such a run over itself and refuses a directory holding anything else (the
    # script removed the directory, whatever it held: a fuzz lost a file of its own put there)
    assert (out / "mcts" / "metrics.jsonl").exists()
    assert (out / "summary.md").read_text().count("| 0.000 | 0.000 | 1.00 | 9 |") == 9
    # the trained policies are evaluated from their run directories (the final checkpoint), final_hf or not
    evals = [c for c in (tmp_path / "calls").read_text().splitlines() if " run.py eval " in c]
    assert sum(f"--model {out}/plain " in c for c in evals) == 3 and sum(f"--model {out}/mcts " in c for c in evals) == 3
    # the eval cut short continues (run again without --resume, it is refused: its answers are kept)
    assert [c.endswith(f"--resume --out-dir {out}/eval-plain-mcts") for c in evals] == [False] * 5 + [True] + [False] * 3


def test_each_run_and_evaluation_gets_its_flags_and_a_finished_run_is_left_as_it_is(tmp_path):
    out = tmp_path / "o"
    (out / "plain" / "final_hf").mkdir(parents=True)
    (out / "plain" / "final_hf" / "config.json").write_text("{}")  # finished and exported
    (tmp_path / "m").mkdir()  # MODEL, a relative path to a model here
    p, train = experiment(tmp_path, "o", MODEL="m")
    assert p.returncode == 0, p.stderr
    assert f"{out}/plain done already" in p.stdout and len(train) == 1
    assert f" run.py train --model {tmp_path}/m --shots 2 " in train[0]
    assert "--rollouts mcts --tree-advantage mix --tree-advantage-weight 0.5 --seed 0 --out-dir" in train[0]
    evals = [c.split(" run.py eval ")[1] for c in (tmp_path / "calls").read_text().splitlines() if " run.py eval " in c]
    assert [e.split(" --shots ")[0] for e in evals] == [f"--model {tmp_path}/m"] * 3 + [f"--model {out}/plain"] * 3 + [f"--model {out}/mcts"] * 3
    assert [e.split(" --search ")[1].split(" --out-dir ")[0] for e in evals[:3]] == ["greedy", "majority --n 4", "mcts --n-simulations 2"]
    plots = [c for c in (tmp_path / "calls").read_text().splitlines() if "plot_runs.py" in c]
    assert plots == [f"GSM8K_DIR={tmp_path}/g scripts/plot_runs.py {out}/curves.png {out}/plain {out}/mcts"]


def test_gpu_sizes_and_a_hub_model_id(tmp_path):
    p, train = experiment(tmp_path, "--gpu", "o", MODEL="org/model")  # not a path here: a hub id, as given
    assert p.returncode == 0, p.stderr
    assert all(" run.py train --model org/model --prompts-per-step 16 " in t for t in train) and len(train) == 2
    evals = [c for c in (tmp_path / "calls").read_text().splitlines() if " run.py eval " in c]
    assert " --limit 500 " in evals[0] and " --search majority --n 8 " in evals[1] and " --n-simulations 8 " in evals[2]
    assert "(gpu settings, " in (tmp_path / "o" / "summary.md").read_text()
