"""TrainConfig's checks (grpo/config.py), without the command line: every number refused one past its bound in one
line naming its flag, every choice refused by name; what a preset and a resume may and may not change."""
import dataclasses
import re

import pytest

from grpo.config import RESUME_MAY_CHANGE, TrainConfig, apply_preset, resumed_config

# every numeric field's smallest legal value (written here, not read from config.py: a field added without a bound,
# or a bound moved, fails below)
LOWEST = {
    **dict.fromkeys(("steps", "prompts_per_step", "max_new_tokens", "mu", "micro_batch", "save_every", "keep_checkpoints",
                     "max_bad_steps", "logprob_chunk", "eval_limit", "eval_batch_size", "mcts_children", "mcts_step_tokens"), 1),
    **dict.fromkeys(("token_budget", "profile_step", "shots", "mcts_simulations", "warmup_steps", "log_samples", "eval_every",
                     "seed"), 0),
    **dict.fromkeys(("max_minutes", "beta", "eps_low", "eps_high", "mcts_c_puct", "weight_decay", "max_grad_norm", "lr",
                     "tree_advantage_weight", "mcts_prob", "adam_beta1", "adam_beta2"), 0.0),
    "group_size": 2,
}


def refused(match: str, **kw) -> None:
    with pytest.raises(ValueError, match=match) as e:
        TrainConfig(**kw)
    assert "\n" not in str(e.value)


def test_every_number_is_refused_just_below_its_bound_and_taken_at_it():
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", "float")}
    assert numeric - {"temperature", "top_p"} == set(LOWEST)  # (those two must be > 0: below)
    for name, low in LOWEST.items():
        TrainConfig(**{name: low})
        below = low - 1 if isinstance(low, int) else -0.5
        refused(rf"^--{name.replace('_', '-')} must be .*, got {below}\b", **{name: below})
    refused(r"^--temperature must be > 0, got 0.0", temperature=0.0)
    TrainConfig(temperature=1e-3, top_p=1.0)
    for top_p in (0.0, 1.01):
        refused(rf"^--top-p must be in \(0, 1\], got {top_p}$", top_p=top_p)


def test_rates_are_refused_past_their_top_and_counts_past_two_to_the_31():
    refused(r"^--mcts-prob must be in \[0, 1\], got 1.5$", mcts_prob=1.5)
    for name in ("eps_low", "adam_beta1", "adam_beta2"):
        refused(rf"^--{name.replace('_', '-')} must be in \[0, 1\), got 1.0$", **{name: 1.0})
        TrainConfig(**{name: 0.999})
    TrainConfig(eps_high=3.0)  # the ratio may grow past 2 before it is clipped
    refused(r"^--steps must be below 2\*\*31, got 2147483648$", steps=2**31)
    TrainConfig(steps=2**31 - 1, warmup_steps=2**31 - 1)
    TrainConfig(token_budget=2**40, seed=2**63 - 1)  # a token budget and a seed may be larger
    refused(r"^--seed must be in \[0, 2\*\*63\), got 9223372036854775808$", seed=2**63)
    refused(r"^--profile-step 3 is past the run's last step \(--steps 2\)$", steps=2, profile_step=3)
    TrainConfig(steps=2, profile_step=2)  # the last step may be profiled


@pytest.mark.parametrize("name,bad", [("adv_scale", "groups"), ("loss_agg", "mean"), ("old_logprobs", "policy"),
                                      ("rollouts", "tree"), ("mcts_root", "ucb"), ("tree_advantage", "token"),
                                      ("preset", "large"), ("decode", "fast"), ("precision", "fp16"), ("device", "gpu"),
                                      ("device", "cuda:x"), ("mcts_step", "tokens:0")])
def test_every_choice_is_checked_with_the_config(name, bad):
    """Before the model loads (each would fail after it, in other words, or train on a default)."""
    refused(rf"^unknown --{name.replace('_', '-')} '{bad}'", **{name: bad})


def test_rewards_are_parsed_with_the_config():
    refused(r"unknown reward functions \['foo'\]", rewards="foo=1")
    TrainConfig(rewards="correctness=1,xmlcount=0.5")


def test_a_preset_gives_what_the_flags_did_not():
    cfg = apply_preset(TrainConfig(preset="smoke", steps=7, group_size=6, lr=0.5), {"steps", "lr"})
    assert (cfg.steps, cfg.lr) == (7, 0.5)  # given: kept, even where the preset has its own
    assert (cfg.group_size, cfg.max_new_tokens, cfg.eval_at_start) == (4, 48, False)  # not given: the preset's


# a legal value other than the default, for every field (a number: by its type, below)
OTHER = {"model": "other-model", "gsm8k": "/elsewhere", "out_dir": "runs/other", "preset": "smoke", "rewards": "correctness=1",
         "adv_scale": "batch", "loss_agg": "token-mean", "rollouts": "mcts", "tree_advantage": "step", "mcts_root": "gumbel",
         "mcts_step": "tokens:4", "old_logprobs": "sampler", "stop": "", "device": "cpu", "precision": "bf16",
         "decode": "static"}


def other_value(f: dataclasses.Field):
    if f.name in OTHER:
        return OTHER[f.name]
    if f.type == "bool":
        return not f.default
    if f.type == "int":
        return f.default + 1
    return f.default / 2 if f.default else 0.5


def test_a_resume_takes_limits_logging_and_where_it_runs_and_refuses_every_change_to_the_training():
    """The flags beside --resume that may change are when it stops, how it is evaluated, checkpointed and logged, the
    device and decode path, where GSM8K is read from; any other field changed is the training itself."""
    saved = dataclasses.asdict(TrainConfig(steps=3))
    may = {"max_minutes", "token_budget", "eval_every", "eval_limit", "eval_at_start", "eval_batch_size", "log_samples",
           "save_every", "keep_checkpoints", "device", "decode", "gsm8k", "profile_step"}
    assert set(RESUME_MAY_CHANGE) == may
    for f in dataclasses.fields(TrainConfig):
        if f.name == "resume":
            continue
        cfg = dataclasses.replace(TrainConfig(steps=3), **{f.name: other_value(f)})
        if f.name in may:
            new, changed = resumed_config(saved, cfg, {f.name}, "run")
            assert changed == {f.name: (saved[f.name], other_value(f))} and getattr(new, f.name) == other_value(f), f.name
            assert new.resume == "run" and new.steps == 3
        else:
            with pytest.raises(ValueError, match=rf"^--resume run: --{f.name.replace('_', '-')} \(the run has "):
                resumed_config(saved, cfg, {f.name}, "run")
        resumed_config(saved, cfg, set(), "run")  # not given: the saved value, whatever the field's value here


def test_a_resume_takes_the_runs_model_written_another_way():
    saved = dataclasses.asdict(TrainConfig(model="runs/base", steps=3))
    for spec in ("runs/base/", "runs/./base", "runs/x/../base"):
        new, changed = resumed_config(saved, TrainConfig(model=spec), {"model"}, "run")
        assert changed == {} and new.model == "runs/base", spec
    with pytest.raises(ValueError, match=r"--model \(the run has 'runs/base'\)"):
        resumed_config(saved, TrainConfig(model="runs/other"), {"model"}, "run")


def test_a_warm_up_as_long_as_the_run_is_noted(tmp_path, monkeypatch, capsys):
    """Seen in a fuzz: `train --steps 5` with the default --warmup-steps 10 never got past 5/11 of --lr and never
    decayed, without a word. A note, not an error (a short trial may want it); worked by hand: the last step, i = 4,
    runs at (4 + 1) / (10 + 1) of --lr (trainer.warmup_cosine)."""
    from helpers import tiny_run

    from grpo.config import warmup_note
    from grpo.trainer import warmup_cosine

    assert warmup_cosine(10, 5)(4) == 5 / 11
    assert warmup_note(TrainConfig(steps=5)) == ("note: --warmup-steps 10 is not below --steps 5: every step is in the warm-up, "
                                                 "so the learning rate reaches 5/11 of --lr at most and never decays: give a "
                                                 "smaller --warmup-steps (e.g. 0)")
    assert warmup_note(TrainConfig(steps=40, warmup_steps=40)).endswith("40/41 of --lr at most and never decays: give a smaller "
                                                                         "--warmup-steps (e.g. 4, a tenth of the run)")
    assert warmup_note(TrainConfig(steps=11)) is None and warmup_note(TrainConfig(steps=10, warmup_steps=0)) is None
    tiny_run(tmp_path, monkeypatch, steps=1)  # (warm-up 10 by default)
    assert "note: --warmup-steps 10 is not below --steps 1" in capsys.readouterr().err


def test_each_field_must_hold_its_annotated_type():
    """A config read back from JSON (a resume) may have been edited by hand: a value of another type is refused when
    the config is made, naming the flag, where a string for a number or a path failed later with a traceback."""
    from grpo.evaluate import EvalConfig

    assert TrainConfig(lr=1).lr == 1 and TrainConfig(resume=None).resume is None  # an int is a number; null where optional
    for cls, kw, says in ((TrainConfig, dict(lr="1e-6"), "--lr is '1e-6', not a number"),
                          (TrainConfig, dict(steps=True), "--steps is True, not an integer"),  # (bool is an int in Python)
                          (TrainConfig, dict(eval_at_start=1), "--eval-at-start is 1, not true or false"),
                          (EvalConfig, dict(gsm8k=5), "--gsm8k is 5, not a string or null"),
                          (EvalConfig, dict(temperature=None), "--temperature is None, not a number")):
        with pytest.raises(TypeError, match=re.escape(says)):
            cls(**kw)


def test_a_tree_too_small_for_its_group_is_noted(tmp_path, monkeypatch, capsys):
    """Seen in a combination fuzz: --rollouts mcts --mcts-simulations 1 --mcts-children 1 gave each group one rollout
    repeated G times (tree_rollout.py's cycle_to), so reward_std, loss and grad_norm were 0 at every step, without a word."""
    from helpers import tiny_run

    from grpo.config import small_tree_note

    assert small_tree_note(TrainConfig(rollouts="mcts", mcts_simulations=1, mcts_children=4, group_size=8)) == (
        "note: --mcts-simulations 1 x --mcts-children 4 give a tree 4 rollouts at most, fewer than --group-size 8: they are "
        "repeated to fill the group; leave --mcts-simulations out for enough")
    for fine in (TrainConfig(rollouts="mcts", mcts_simulations=2, mcts_children=4, group_size=8),  # 8 rollouts: enough
                 TrainConfig(rollouts="mcts", mcts_children=1, group_size=8),  # the default simulations, 2 * ceil(G / K)
                 TrainConfig(rollouts="mcts", mcts_simulations=1, mcts_children=1, mcts_prob=0.0),  # no tree at all
                 TrainConfig(mcts_simulations=1, mcts_children=1)):  # plain rollouts
        assert small_tree_note(fine) is None
    tiny_run(tmp_path, monkeypatch, steps=1, rollouts="mcts", mcts_simulations=1, mcts_children=1, warmup_steps=0)
    assert ("note: --mcts-simulations 1 x --mcts-children 1 give a tree 1 rollout at most, fewer than --group-size 2: they "
            "are repeated to fill the group (every row the same: no advantage, nothing learnt from a tree)"
            in capsys.readouterr().err)
