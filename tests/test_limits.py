"""grpo/limits.py: when a training run ends, gives up, or says it has nothing to learn from, on hand-set cases."""
import pytest

from grpo.config import TrainConfig
from grpo.limits import (FLAT_STEPS_HINT, TrainingError, early_end_line, finished, no_format_note, no_signal_note,
                         non_finite_error, over_limits)


def test_a_run_is_finished_at_its_steps_or_its_token_budget():
    cfg = TrainConfig(steps=10, token_budget=0)
    assert not finished(cfg, 9, 10**9) and finished(cfg, 10, 0)  # no budget: only the steps count
    cfg = TrainConfig(steps=10, token_budget=1000)
    assert not finished(cfg, 3, 999) and finished(cfg, 3, 1000) and finished(cfg, 10, 0)


def test_the_time_limit_forecasts_the_next_step():
    cfg = TrainConfig(max_minutes=1.0, token_budget=0)  # 60 s
    assert not over_limits(cfg, 0, elapsed_s=50.0, last_step_s=10.0)  # the next step ends at 60 s: within
    assert over_limits(cfg, 0, elapsed_s=50.0, last_step_s=10.5)
    assert not over_limits(TrainConfig(max_minutes=0.0, token_budget=0), 0, elapsed_s=1e9, last_step_s=1e9)  # no limit
    assert over_limits(TrainConfig(max_minutes=0.0, token_budget=5), 5, elapsed_s=0.0, last_step_s=0.0)


def test_an_early_end_names_what_ended_it():
    cfg = TrainConfig(steps=10, token_budget=100)
    assert early_end_line(cfg, 10, 100, "runs/x") is None  # all steps run: nothing to say
    assert early_end_line(cfg, 4, 100, "runs/x") == "stopped by its --token-budget at step 4 of 10; final_hf holds the model so far"
    assert early_end_line(cfg, 4, 99, "runs/x") == ("stopped by --max-minutes at step 4 of 10; final_hf holds the model "
                                                    "so far; `run.py train --resume runs/x` continues")


def test_the_notes_come_once_and_only_when_they_apply():
    said = [no_signal_note(n, 0.25, shots=0) for n in range(1, 2 * FLAT_STEPS_HINT)]
    assert [n for n, x in enumerate(said, 1) if x] == [FLAT_STEPS_HINT]
    assert "(mean 0.250)" in said[FLAT_STEPS_HINT - 1] and "few-shot prompts (--shots 2)" in said[FLAT_STEPS_HINT - 1]
    assert "--shots" not in no_signal_note(FLAT_STEPS_HINT, 0.0, shots=2)  # already few-shot: only a stronger model
    zero_shot = TrainConfig(shots=0, eval_limit=7)
    assert "format on the 7 evaluation questions" in no_format_note(zero_shot, {"eval/format_soft_rate": 0.0})
    assert no_format_note(zero_shot, {"eval/format_soft_rate": 0.1}) is None
    assert no_format_note(zero_shot, {}) is None  # no format rate measured (no evaluation of the start): no claim
    assert no_format_note(TrainConfig(shots=2), {"eval/format_soft_rate": 0.0}) is None


def test_the_non_finite_stop_says_what_to_try():
    e = non_finite_error(TrainConfig(max_grad_norm=0.5), 3, 12, have_checkpoint=True)
    assert isinstance(e, TrainingError)
    assert str(e) == ("3 non-finite updates in a row at step 12: lower --lr, clip harder (--max-grad-norm below 0.5) or "
                      "check the rewards; checkpoints so far are intact")
    with pytest.raises(TrainingError, match=r"^1 non-finite update at step 1: .*clip gradients \(--max-grad-norm 1\).*no checkpoint was written yet$"):
        raise non_finite_error(TrainConfig(max_grad_norm=0.0), 1, 1, have_checkpoint=False)
