"""When a GRPO run on tiny random models stops early or warns: non-finite updates and gradients, no learning signal, no
format, the time limit and its forecast of the next step, impossible settings."""
import json
import math

import pytest
import torch
from helpers import make_trainer

from grpo.checkpointing import checkpoint_dirs
from grpo.rewards import RewardSet
from grpo.limits import TrainingError


def test_non_finite_updates_are_skipped_then_stop(tmp_path, capsys):
    calls = {"n": 0}

    def flaky(completions, **_):
        calls["n"] += 1
        return [float("nan") if calls["n"] > 1 else float(i % 2) for i in range(len(completions))]

    tr = make_trainer(tmp_path, rewards=RewardSet({"flaky": 1.0}, {"flaky": flaky}), save_every=1, max_bad_steps=2)
    tr.train(until_step=1)
    good = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    capsys.readouterr()
    tr.train_step()  # NaN advantages: the update is skipped
    for n, p in tr.model.named_parameters():
        assert torch.equal(good[n], p), n
    # numbered as metrics.jsonl and the checkpoints number the step (an audit saw each one lower)
    assert "step 2: non-finite loss (nan)" in capsys.readouterr().out
    with pytest.raises(TrainingError, match=r"non-finite updates in a row at step 3: lower --lr, clip harder \(--max-grad-norm below 1\)"):
        tr.train_step()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000001"]
    tr.cfg.max_grad_norm, tr.bad_steps = 0.0, 0  # clipping off: the advice is to turn it on
    tr.train_step()
    with pytest.raises(TrainingError, match=r"lower --lr, clip gradients \(--max-grad-norm 1\) or check the rewards"):
        tr.train_step()


def test_a_run_without_learning_signal_says_so_once(tmp_path, capsys):
    """Rewards that never differ inside a group give zero advantages: after 5 such steps the trainer says why
    and what helps, once."""
    flat = RewardSet({"zero": 1.0}, {"zero": lambda completions, **_: [0.0] * len(completions)})
    tr = make_trainer(tmp_path, steps=7, rewards=flat)
    tr.train()
    out = capsys.readouterr()
    assert (out.out + out.err).count("no learning signal") == 1 and "--shots 2" in out.out + out.err
    few_shot = make_trainer(tmp_path / "c", steps=5, rewards=flat, shots=2)  # already few-shot: no --shots advice
    few_shot.train()
    out = "".join(capsys.readouterr())
    assert "no learning signal" in out and "--shots" not in out and "stronger --model" in out
    learning = make_trainer(tmp_path / "b", steps=6)  # the letters reward differs between completions
    learning.train()
    assert "no learning signal" not in "".join(capsys.readouterr())


def test_a_start_that_never_writes_the_format_is_reported_before_training(tmp_path, capsys):
    tr = make_trainer(tmp_path, steps=1, eval_every=1, eval_limit=2, eval_batch_size=2)
    tr.test_set = tr.train_set[:2]  # a random tiny model: it never writes <reasoning>/<answer>
    tr.train()
    out = capsys.readouterr()
    assert "wrote no answer in the <reasoning>/<answer> format" in out.out + out.err
    shots = make_trainer(tmp_path / "b", steps=1, eval_every=1, eval_limit=2, eval_batch_size=2, shots=1)
    shots.test_set = shots.train_set[:2]
    shots.train()
    assert "wrote no answer" not in "".join(capsys.readouterr())  # with examples in the prompt: not this advice


def test_a_run_stopped_by_its_time_limit_says_so(tmp_path, capsys):
    """...and its last step is checkpointed and evaluated as a run's last step is, off --save-every and --eval-every."""
    tr = make_trainer(tmp_path, steps=3, max_minutes=1e-9, eval_every=2, eval_limit=1, eval_at_start=False)
    tr.test_set = tr.train_set[:1]
    tr.train()
    assert tr.step == 1 and (tmp_path / "final_hf").is_dir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000001"]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1] and "eval/accuracy_strict" in rows[1]
    out = capsys.readouterr().out
    assert f"stopped by --max-minutes at step 1 of 3; final_hf holds the model so far; `run.py train --resume {tmp_path}` continues" in out


def test_the_time_limit_stops_before_a_step_that_would_end_past_it(tmp_path, monkeypatch):
    import types

    import grpo.trainer

    tr = make_trainer(tmp_path, steps=3, max_minutes=0.25)  # 15 s
    assert not tr.budget_spent()
    # on a clock that stands at 1000 s (the real one, on a loaded machine, could add a second between two lines)
    monkeypatch.setattr(grpo.trainer, "time", types.SimpleNamespace(perf_counter=lambda: 1000.0))
    tr._t_start, tr._last_step_s = 990.0, 4.0  # 10 s gone, the last step took 4: one more fits
    assert not tr.budget_spent()
    tr._last_step_s = 5.0  # the next step would end at exactly 15 s: still within
    assert not tr.budget_spent()
    tr._last_step_s = 6.0  # the next step would end at 16 s
    assert tr.budget_spent()


def test_the_step_estimate_counts_prefill_once_per_prompt_and_probes_the_training_pass(tmp_path, monkeypatch):
    """run.py's 'estimated time per step' on a CPU, on a fake clock: a first generate call is not timed (its one-time
    costs), then the prompt's prefill (generate with one token) counts once per prompt, the decode time per token
    (9 tokens less 1) once per token of each micro-batch, and the forward+backward probe is the shared-prompt
    training pass; the probe leaves no gradient, no packed weight copy, the weights and the global RNG as they
    were."""
    import types

    import grpo.estimate
    from model_io.linear import Linear

    tr = make_trainer(tmp_path, beta=0.04)  # 4 prompts x 8 rows, micro-batch 12: 3 micro-batches; a reference
    # an untimed first call (its one-time costs), then prefill 1 s, 9 tokens 1.4 s, forward+backward 3 s
    ticks = iter([0.0, 5.0, 6.0, 7.0, 10.0, 11.4, 20.0, 23.0])
    monkeypatch.setattr(grpo.estimate, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    seen = []
    real = grpo.estimate.completion_logprobs
    monkeypatch.setattr(grpo.estimate, "completion_logprobs", lambda m, ro, rows, *a, **k: seen.append((len(ro.prompts), len(rows))) or real(m, ro, rows, *a, **k))
    before = [p.detach().clone() for p in tr.model.parameters()]
    rng = torch.get_rng_state()
    est = tr.estimate_step_seconds()
    # 4 prompts x 1 s + 3 micro-batches x (0.05 s x 8 tokens + 3 s x (mu 1 + the reference's forward, 1/3))
    assert est == pytest.approx(4 * 1.0 + 3 * (0.05 * 8 + 3.0 * (1 + 1 / 3)))
    assert seen == [(2, 12)]  # 12 rows of 8 per prompt span 2 prompts, each run once
    assert all(p.grad is None for p in tr.model.parameters())
    assert all(m._packed is None for m in tr.model.modules() if isinstance(m, Linear))
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters())) and torch.equal(torch.get_rng_state(), rng)
    # mu updates, and the policy's recomputed old log-probs a forward pass more; each process samples its own
    # share of the prompts: 2 of 4 here, in 2 micro-batches (16 rows of 12)
    from grpo.distributed import Dist

    tr = make_trainer(tmp_path / "b", mu=2, old_logprobs="recompute", dist=Dist(rank=1, world=2))
    ticks = iter([0.0, 5.0, 6.0, 7.0, 10.0, 11.4, 20.0, 23.0])
    assert tr.estimate_step_seconds() == pytest.approx(2 * 1.0 + 2 * (0.05 * 8 + 3.0 * (2 + 1 / 3)))


def test_more_prompts_per_step_than_problems_is_refused(tmp_path):
    """A review: with --prompts-per-step above the training problems (a small --gsm8k file) a batch repeats
    problems, and a problem's completions are keyed by (seed, step, problem, g): its two groups sampled the same
    completions, one group counted twice. Now one line naming the flag and the bound."""
    with pytest.raises(ValueError, match=r"^--prompts-per-step 17 is more than the 16 training problems .* at most 16$"):
        make_trainer(tmp_path / "run", prompts_per_step=17)
    make_trainer(tmp_path / "ok", prompts_per_step=16)  # every problem once


# (a run whose first update is skipped: torch warned that the schedule lost its first value, which it does not)
@pytest.mark.filterwarnings("error:Detected call of .lr_scheduler.step:UserWarning")
def test_a_non_finite_gradient_alone_skips_the_update_and_a_taken_one_starts_the_count_over(tmp_path, capsys):
    """A finite loss whose gradient is not (here: one weight's, made infinite by a hook): the update is skipped and its
    gradients freed; an update taken between two skipped ones starts the count of skips in a row over."""
    tr = make_trainer(tmp_path, max_bad_steps=2)
    poison = [True]
    tr.params[0].register_hook(lambda g: g * float("inf") if poison[0] else g)
    before = [p.detach().clone() for p in tr.params]
    m = tr.train_step()
    assert math.isfinite(m["loss"]) and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(a, p) for a, p in zip(before, tr.params)) and all(p.grad is None for p in tr.params)
    assert "step 1: non-finite loss" in capsys.readouterr().out
    poison[0] = False
    tr.train_step()
    assert not all(torch.equal(a, p) for a, p in zip(before, tr.params))
    poison[0] = True
    tr.train_step()  # one skipped in a row: goes on
    with pytest.raises(TrainingError, match="^2 non-finite updates in a row at step 4"):
        tr.train_step()


def test_the_count_of_flat_steps_starts_over_at_a_step_with_a_learning_signal(tmp_path, monkeypatch):
    calls = []

    def signal_at_step_3(completions, **_):
        calls.append(1)
        return [float(len(calls) == 3 and i % 2) for i in range(len(completions))]

    tr = make_trainer(tmp_path, steps=4, rewards=RewardSet({"r": 1.0}, {"r": signal_at_step_3}), prompts_per_step=2,
                      group_size=2, max_new_tokens=2)
    counts, real = [], tr.train_step
    monkeypatch.setattr(tr, "train_step", lambda: counts.append(tr.flat_steps) or real())
    tr.train()
    assert counts + [tr.flat_steps] == [0, 1, 2, 0, 1]


def test_the_time_limit_forecasts_the_next_step_by_the_last_ones_time(tmp_path, monkeypatch):
    """On a clock that moves only while the rollout samples (25 s a step): the step's time and its split are by hand,
    and the run stops before a step that would end past --max-minutes 1 by that time."""
    import types

    import grpo.trainer as T

    now = [0.0]
    monkeypatch.setattr(T, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    real = T.collect

    def slow_collect(*a, **k):
        now[0] += 25.0
        return real(*a, **k)

    monkeypatch.setattr(T, "collect", slow_collect)
    tr = make_trainer(tmp_path, max_minutes=1.0)
    m = tr.train_step()
    assert (m["step_time"], m["time/rollout"], m["time/logprobs"], m["time/update"]) == (25.0, 25.0, 0.0, 0.0)
    assert not tr.budget_spent()  # 25 s gone, a step of 25 s more ends at 50 s
    now[0] = 40.0
    assert tr.budget_spent()  # 40 + 25 > 60
