"""Evaluations inside a GRPO run on tiny random models: when they are owed, which questions they ask, what a stop
during one keeps and what a resume runs again."""
import json

import pytest
from helpers import make_trainer


@pytest.mark.parametrize("at_start", [True, False])
def test_evaluation_of_the_start_is_logged_as_step_0(tmp_path, at_start):
    import sys
    from pathlib import Path

    tr = make_trainer(tmp_path, steps=2, eval_every=2, eval_limit=2, eval_batch_size=2, eval_at_start=at_start)
    tr.test_set = tr.train_set[:2]
    tr.train()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # each evaluation a line of its own after its step's (logged, and checkpointed, before the evaluation runs)
    assert [r["step"] for r in rows] == ([0, 1, 2, 2] if at_start else [1, 2, 2])
    assert "eval/accuracy_strict" in rows[-1] and "reward" not in rows[-1] and "reward" in rows[-2]
    assert rows[-1]["rollout/generated_tokens_total"] == rows[-2]["rollout/generated_tokens_total"] > 0
    if at_start:
        assert "eval/format_soft_rate" in rows[0] and "reward" not in rows[0] and rows[0]["rollout/generated_tokens_total"] == 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from plot_runs import table  # the curves' table reads such a log: rewards from steps, evaluations from all rows

    row = table({"run": rows})[-1]
    assert row.startswith("| run | 2 |") and "nan" not in row


def test_a_stop_during_an_evaluation_keeps_the_steps_before_it(tmp_path):
    """A review: the evaluation ran before the step was logged and checkpointed, so a Ctrl-C, SIGTERM or
    out-of-memory in it (minutes on a CPU, at the defaults' every 50 steps) lost every step since the last
    checkpoint. Now the step is logged and saved first."""
    tr = make_trainer(tmp_path, steps=4, eval_every=2, save_every=2, eval_limit=1, eval_at_start=False)
    tr.test_set = tr.train_set[:1]
    tr.evaluate = lambda: (_ for _ in ()).throw(KeyboardInterrupt)  # stopped in the first evaluation, at step 2
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert [d.name for d in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resume_runs_the_evaluation_a_stop_cut_short(tmp_path, capsys):
    """A review: the step is checkpointed before its evaluation, so a stop during that evaluation resumed after it,
    and the run's evaluation at that step was never made (at the last step either: the run had finished). The
    resume now runs it first: the evaluations, and every other line, are those of a run never stopped."""
    def rows(run):
        drop = ("step_time", "time/rollout", "time/logprobs", "time/update", "tokens_per_sec")
        return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in (run / "metrics.jsonl").read_text().splitlines()]

    kw = dict(steps=4, eval_every=2, save_every=2, eval_limit=2, eval_batch_size=2, eval_at_start=False)
    straight = make_trainer(tmp_path / "a", **kw)
    straight.test_set = straight.train_set[:2]
    straight.train()
    for stop_at in (2, 4):  # an evaluation mid-run, and the final one
        run = tmp_path / f"stop{stop_at}"
        tr = make_trainer(run, **kw)
        tr.test_set = tr.train_set[:2]
        tr.evaluate = lambda real=tr.evaluate, tr=tr: real() if tr.step != stop_at else (_ for _ in ()).throw(KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            tr.train()
        again = make_trainer(run, **kw)
        again.test_set = again.train_set[:2]
        assert again.resume() and again.step == stop_at
        if again.finished():  # what run.py does for a finished run
            again.evaluate_if_owed()
        else:
            again.train()
        assert rows(run) == rows(tmp_path / "a"), stop_at
        assert f"step {stop_at}: evaluating it now (no evaluation of it was logged)" in capsys.readouterr().out
        done = make_trainer(run, **kw)  # resumed once more: nothing owed, nothing run
        done.test_set = done.train_set[:2]
        assert done.resume() and done.finished()
        done.evaluate_if_owed()
        assert rows(run) == rows(tmp_path / "a") and "evaluating it now" not in capsys.readouterr().out


def test_an_evaluation_asks_the_first_eval_limit_test_questions(tmp_path, monkeypatch):
    import grpo.trainer as T

    asked = []
    summary = dict.fromkeys(("accuracy_strict", "accuracy_lenient", "format_soft_rate", "generated_tokens_per_answer"), 0.0)
    monkeypatch.setattr(T, "evaluate", lambda model, tok, problems, *a, **k: asked.append([p.question for p in problems]) or (summary, []))
    tr = make_trainer(tmp_path, eval_every=1, eval_limit=2)
    tr.test_set = tr.train_set[3:8]
    assert tr.evaluate() == {f"eval/{k}": 0.0 for k in summary}
    assert asked == [["question 3", "question 4"]]


def test_evaluations_are_owed_at_multiples_of_eval_every_and_the_last_step_and_a_resume_skips_the_starts(tmp_path, monkeypatch):
    """(None logged yet in this run directory: every due one is owed.) The start's evaluation (step 0) is --eval-at-start's,
    made by a run that starts at step 0, not by a resumed one."""
    tr = make_trainer(tmp_path, steps=5, eval_every=2, eval_at_start=True)
    ran = []
    monkeypatch.setattr(tr, "evaluate", lambda: ran.append(tr.step) or {})
    for step in range(6):
        tr.step = step
        tr.evaluate_if_owed()
    assert ran == [2, 4, 5]
    tr.step, ran[:] = 3, []  # as resumed at step 3: owes nothing
    monkeypatch.setattr(tr, "train_step", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert ran == []
