"""A training run's limits: when it ends, when it gives up, and the note it gives once when it has nothing to learn
from. (How a command is stopped from outside, by a signal, a full disk or memory: grpo/stops.py.)

A run ends at --steps, or earlier when its --token-budget (rollout tokens, all processes) is spent or the next step
would end past --max-minutes; a resumed run may be at its steps or its budget already (it then trains nothing),
while --max-minutes counts from the resume. Clocks differ between
processes, so the ranks take one decision together: a rank that stopped alone would leave the others waiting in
their next all-reduce for ever.
"""
from __future__ import annotations

import torch

from . import distributed as D
from .config import TrainConfig

FLAT_STEPS_HINT = 5  # flat steps in a row before the no-signal note


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite updates); the message says why and what to try."""


def finished(cfg: TrainConfig, step: int, generated_total: int) -> bool:
    """All --steps done, or the --token-budget spent."""
    return step >= cfg.steps or tokens_spent(cfg, generated_total)


def tokens_spent(cfg: TrainConfig, generated_total: int) -> bool:
    return bool(cfg.token_budget) and generated_total >= cfg.token_budget


def over_limits(cfg: TrainConfig, generated_total: int, elapsed_s: float, last_step_s: float) -> bool:
    """--max-minutes stops before a step that would end past it, forecast by the last step's time (a limit checked
    only after each step overruns it by up to a step: on a slow machine more than a caller's time limit left)."""
    over_time = bool(cfg.max_minutes) and elapsed_s + last_step_s > 60 * cfg.max_minutes
    return over_time or tokens_spent(cfg, generated_total)


def on_any_rank(flag: bool, dist: D.Dist, device: torch.device) -> bool:
    """True on every rank if it is true on one."""
    return bool(D.all_reduce_sum(torch.tensor([float(flag)], device=device), dist).item() > 0)


def early_end_line(cfg: TrainConfig, step: int, generated_total: int, run_dir) -> str | None:
    """What a run that ended before --steps says (None if it ran them all)."""
    if step >= cfg.steps:
        return None
    by = "its --token-budget" if tokens_spent(cfg, generated_total) else "--max-minutes"
    return (f"stopped by {by} at step {step} of {cfg.steps}; final_hf holds the model so far"
            + ("" if by != "--max-minutes" else f"; `run.py train --resume {run_dir}` continues"))


def no_format_note(cfg: TrainConfig, start: dict[str, float]) -> str | None:
    """Said after the evaluation of the starting model, zero-shot, if it wrote no answer in the rewarded format."""
    if start.get("eval/format_soft_rate", 1.0) != 0 or cfg.shots:
        return None
    return (f"note: the starting model wrote no answer in the <reasoning>/<answer> format on the {cfg.eval_limit} "
            "evaluation questions; most rewards may be 0 and leave GRPO nothing to learn from: few-shot prompts "
            "(--shots 2) or a stronger --model help")


def no_signal_note(flat_steps: int, reward: float, shots: int) -> str | None:
    """Said early, at FLAT_STEPS_HINT flat steps in a row (once per such streak), when every group's rewards were identical: zero
    advantages, only the KL term moves the weights, as for the default 135M model zero-shot, which never writes the
    rewarded format (RESULTS.md)."""
    if flat_steps != FLAT_STEPS_HINT:
        return None
    fix = "few-shot prompts (--shots 2) or a stronger --model give" if shots == 0 else "a stronger --model gives"
    return (f"note: for {flat_steps} steps every group's completions got the same reward (mean {reward:.3f}): zero "
            f"advantages, no learning signal; {fix} the policy rewards to tell apart")


def non_finite_error(cfg: TrainConfig, bad_steps: int, step: int, have_checkpoint: bool) -> TrainingError:
    """--max-bad-steps updates in a row were skipped (a non-finite loss or gradient norm): the run stops."""
    clip = "clip gradients (--max-grad-norm 1)" if not cfg.max_grad_norm else f"clip harder (--max-grad-norm below {cfg.max_grad_norm:g})"
    return TrainingError(f"{bad_steps} non-finite update{'s in a row' if bad_steps > 1 else ''} at step {step}: lower --lr, "
                         f"{clip} or check the rewards; "
                         + ("checkpoints so far are intact" if have_checkpoint else "no checkpoint was written yet"))
