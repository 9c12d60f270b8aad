"""Resuming a GRPO run on tiny random models: the continuation is bitwise the uninterrupted run's, every log is cut
back to the checkpoint, the counters it carries survive, other training problems are refused."""
import json

import pytest
import torch
from helpers import make_trainer, tiny_hf_model

from grpo.checkpointing import checkpoint_dirs
from grpo.rewards import RewardSet
from grpo.limits import FLAT_STEPS_HINT, TrainingError
from model_io.convert import from_hf_model


@pytest.mark.parametrize("precision,old", [("fp32", "auto"), ("fp32", "recompute"), ("bf16", "auto")])
def test_resume_is_bitwise_identical(tmp_path, precision, old):
    """Also with packed weight copies made after sampling (recomputed old log-probs): the fused AdamW step does
    not move the weights' version counters, so those copies went stale and the straight run sampled from the
    weights of the step before, where the resumed one did not."""
    kw = dict(beta=0.04, mu=2, micro_batch=5, precision=precision, old_logprobs=old)
    straight = make_trainer(tmp_path / "a", **kw)
    straight.train()
    killed = make_trainer(tmp_path / "b", save_every=1, keep_checkpoints=2, **kw)
    killed.train(until_step=3)
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step-000002", "step-000003"]  # the newest 2 kept
    resumed = make_trainer(tmp_path / "b", save_every=1, keep_checkpoints=2, **kw)
    assert resumed.resume() and resumed.step == 3
    resumed.train()
    init = from_hf_model(tiny_hf_model("llama", seed=0))
    for (n, a), (_, b), (_, c) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), init.named_parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, c), n
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "a" / "final_hf" / "config.json").is_file()


def test_the_count_of_flat_steps_survives_a_resume(tmp_path, capsys):
    """The 'every group got the same reward' note comes after FLAT_STEPS_HINT flat steps, resumed or not."""
    flat = RewardSet({"zero": 1.0}, {"zero": lambda completions, **_: [0.0] * len(completions)})
    tr = make_trainer(tmp_path, rewards=flat, save_every=1, steps=8)
    tr.train(until_step=2)
    again = make_trainer(tmp_path, rewards=flat, save_every=1, steps=8)
    assert again.resume() and again.step == 2 and again.flat_steps == 2
    capsys.readouterr()
    again.train(until_step=FLAT_STEPS_HINT)
    assert f"for {FLAT_STEPS_HINT} steps every group's completions got the same reward" in capsys.readouterr().out


def test_resume_drops_the_steps_after_the_checkpoint_from_every_log(tmp_path):
    """Steps logged after the last checkpoint are run again on resume: metrics.jsonl and TensorBoard must hold
    each step once, with the values of the run that continued."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed = make_trainer(tmp_path, save_every=2)
    killed.train(until_step=3)  # checkpoint at step 2, step 3 logged after it
    with (tmp_path / "metrics.jsonl").open("a") as f:  # killed while writing step 4: a torn last line
        f.write('{"step": 4, "reward": 0.1')
    resumed = make_trainer(tmp_path, save_every=2)
    assert resumed.resume() and resumed.step == 2
    resumed.train()
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    samples = [json.loads(l)["step"] for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [1, 2, 3, 4, 5, 6]  # --log-samples 1: each step's first completion, numbered as its metrics
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("reward")] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_training_problems(tmp_path):
    """A user walk: `--resume RUN --gsm8k OTHER` (--gsm8k may change on resume: the same files elsewhere) with a
    file of other problems trained on them, silently, from the next step. Each checkpoint records the problems'
    fingerprint: other problems are refused in one line before anything is touched; the same ones resume."""
    from data import Problem

    run = tmp_path / "run"
    make_trainer(run, steps=3, save_every=1).train(until_step=2)
    metrics = (run / "metrics.jsonl").read_text()
    other = [Problem(f"another question {i}", "0", "", i) for i in range(16)]
    with pytest.raises(ValueError, match=r"holds other problems than the run trained on .* --out-dir NEW_DIR$") as e:
        make_trainer(run, steps=3, save_every=1, problems=other).resume()
    assert "\n" not in str(e.value)
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing cut back
    again = make_trainer(run, steps=3, save_every=1)
    assert again.resume() and again.step == 2


def test_a_resume_cuts_the_logs_back_past_torn_and_damaged_lines(tmp_path):
    """On resume the steps after the checkpoint are dropped from metrics.jsonl, and with them any line that is not a
    step's: a CLI audit's hand-damaged lines (`5`, a step "x", a byte that is not UTF-8) raised AttributeError,
    TypeError or a decode error naming no file."""
    from grpo.metrics import RunLog, truncate_log

    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 0, "eval/a": 1}', '{"step": 1, "loss": 0.5}', "5", '{"step": "x"}', '[1]', '{"loss": 1}',
             '{"step": 2.0}', '{"step": 2, "loss": 0.1}', '{"step": 3, "loss"']
    path.write_bytes(("\n".join(lines) + "\n\xff\n").encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    truncate_log(path, 2)
    assert path.read_text().splitlines() == ['{"step": 0, "eval/a": 1}', '{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.1}']
    path.write_bytes(b'5\n{"step": "x"}\n\xff\n{"step": 0, "eval/a": 1}\n')
    log = RunLog.__new__(RunLog)
    log.metrics_path = path
    assert log.logged_evaluation(0) and not log.logged_evaluation(1)
    path.write_text('{"step": 0, "eval/a": 1}\n{"step": 1, "loss": 0.5}\n{"step": true, "eval/a": 1}\n')
    assert not log.logged_evaluation(1)  # step 1 logged a training step, not an evaluation
    truncate_log(path, 5)  # a step true (JSON's boolean) is not a step: dropped
    assert path.read_text().splitlines() == ['{"step": 0, "eval/a": 1}', '{"step": 1, "loss": 0.5}']


def test_cutting_the_log_back_never_leaves_half_of_it(tmp_path, monkeypatch):
    """truncate_log wrote the kept lines over the log in place: a full disk (or a kill) part-way left a log holding
    neither the old lines nor the new ones."""
    import errno
    import pathlib

    from grpo.metrics import truncate_log

    path = tmp_path / "metrics.jsonl"
    whole = "".join(f'{{"step": {s}, "loss": 0.5}}\n' for s in range(5))
    path.write_text(whole)
    real = pathlib.Path.write_text

    def disk_full(self, text, *a, **kw):
        real(self, text[: len(text) // 2], *a, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    with pytest.raises(OSError):
        truncate_log(path, 2)
    assert path.read_text() == whole


# (a run whose first update is skipped: torch warned that the schedule lost its first value, which it does not)
@pytest.mark.filterwarnings("error:Detected call of .lr_scheduler.step:UserWarning")
def test_a_resume_counts_the_skipped_updates_before_its_checkpoint(tmp_path):
    nan = RewardSet({"nan": 1.0}, {"nan": lambda completions, **_: [float("nan")] * len(completions)})
    kw = dict(rewards=nan, max_bad_steps=2, save_every=1, steps=4, prompts_per_step=2, group_size=2, max_new_tokens=2)
    make_trainer(tmp_path, **kw).train(until_step=1)  # skipped, and checkpointed
    again = make_trainer(tmp_path, **kw)
    assert again.resume() and again.step == 1
    with pytest.raises(TrainingError, match="^2 non-finite updates in a row at step 2"):
        again.train_step()
