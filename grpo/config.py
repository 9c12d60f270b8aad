"""TrainConfig: every knob of `run.py train`, with the defaults in one place, and the presets."""
from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass, field

from model_io.precision import check_precision, precision_field
from model_io.sampler import check_decode_mode

from .distributed import check_device
from .loss import ADV_SCALES, AGGREGATIONS
from .rewards import RewardSet


@dataclass
class TrainConfig:
    model: str | None = field(default=None, metadata={"help": "policy to start from: hub id, HF dir, .gguf file, checkpoint dir or training run dir; default: the embedded SmolLM2-135M-Instruct"})
    gsm8k: str | None = field(default=None, metadata={"help": "GSM8K directory holding train.jsonl and test.jsonl, or one of those files where one split is enough; default: $GSM8K_DIR, else the hub"})
    out_dir: str = field(default="runs/train", metadata={"help": "run directory: config, logs, TensorBoard events, checkpoints, final export"})
    resume: str | None = field(default=None, metadata={"help": "continue the run in this directory from its last checkpoint, with its saved config; only flags that do not change the training itself may be given beside it (time and token limits, evaluation, checkpointing, logging, --profile-step, device, sampling path (--decode), where GSM8K is read from)"})
    preset: str = field(default="", metadata={"help": "'smoke': a tiny run (< 2 min on a 2-core CPU) for a first look and CI; flags you give override it"})
    steps: int = field(default=500, metadata={"help": "optimizer steps (each on prompts_per_step x group_size completions)"})
    max_minutes: float = field(default=0.0, metadata={"help": "also stop before a step that would end past this many minutes of training, judged by the last step's time (0: no limit; the first step always runs); the final evaluation and export still run"})
    token_budget: int = field(default=0, metadata={"help": "also stop once this many tokens were generated for rollouts, over all processes (0: no budget); compares rollout schemes at equal sampling cost; the learning-rate schedule still spans --steps"})
    prompts_per_step: int = field(default=8, metadata={"help": "B: prompts per step, over all processes"})
    group_size: int = field(default=8, metadata={"help": "G: completions per prompt"})
    max_new_tokens: int = field(default=256, metadata={"help": "completion length limit"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of rollouts"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass of rollouts"})
    stop: str = field(default="</answer>", metadata={"help": "a completion ends once its text contains this ('' for EOS only)"})
    shots: int = field(default=2, metadata={"help": "k-shot examples (the first train problems, then not trained on) in every prompt; "
                                            "zero-shot the default 135M model never writes the rewarded format, every reward is 0 "
                                            "and GRPO learns nothing (docs/RESULTS.md); 0 gives the recipe's zero-shot prompt"})
    rewards: str = field(default="", metadata={"help": "the rewards used and their weights, e.g. 'correctness=1,xmlcount=0.5' (a reward not named is not used; a negative weight makes a reward a penalty); '' = all five at weight 1"})
    adv_scale: str = field(default="group", metadata={"help": f"advantage normalisation: {' | '.join(ADV_SCALES)}"})
    loss_agg: str = field(default="seq-mean-token-mean", metadata={"help": f"loss aggregation: {' | '.join(AGGREGATIONS)}"})
    beta: float = field(default=0.04, metadata={"help": "KL penalty weight; 0 skips the reference model entirely"})
    eps_low: float = field(default=0.2, metadata={"help": "lower clip range of the ratio"})
    eps_high: float = field(default=0.2, metadata={"help": "upper clip range of the ratio (DAPO's clip-higher: 0.28)"})
    rollouts: str = field(default="plain", metadata={"help": "where groups come from: plain (G samples per prompt) or mcts (G distinct rollouts of a tree search per prompt, finished ones first)"})
    mcts_prob: float = field(default=1.0, metadata={"help": "with --rollouts mcts: per prompt, the tree with this probability, plain sampling otherwise (0: exactly the plain trainer)"})
    tree_advantage: str = field(default="outcome", metadata={"help": "tree rollouts' advantages: outcome (GRPO's per trajectory) | step (V(node) - V(parent) per token) | mix"})
    tree_advantage_weight: float = field(default=1.0, metadata={"help": "mix: outcome + weight * step"})
    mcts_simulations: int = field(default=0, metadata={"help": "simulations per tree (0: 2 * ceil(G / K), enough for G rollouts)"})
    mcts_children: int = field(default=4, metadata={"help": "K: continuations per expansion"})
    mcts_c_puct: float = field(default=1.0, metadata={"help": "PUCT exploration weight (about c/sqrt(K) in AlphaZero's terms, K = --mcts-children: mcts/tree.py)"})
    mcts_root: str = field(default="puct", metadata={"help": "root selection: puct | gumbel (Gumbel scores with Sequential Halving; PUCT below the root)"})
    mcts_step: str = field(default="newline", metadata={"help": "a tree node: 'newline' (a line, capped at --mcts-step-tokens) or 'tokens:N'"})
    mcts_step_tokens: int = field(default=48, metadata={"help": "cap on a newline step"})
    mu: int = field(default=1, metadata={"help": "optimisation passes over each batch of rollouts"})
    micro_batch: int = field(default=8, metadata={"help": "completions per forward/backward (independent of group_size)"})
    old_logprobs: str = field(default="auto", metadata={"help": "old log-probs: 'sampler' (free, from sampling), 'recompute' (one more forward pass) or 'auto' (sampler in float32, recompute in bf16, where sampling and training kernels round differently)"})
    lr: float = field(default=1e-6, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps (step i < W runs at (i+1)/(W+1) of --lr, so no step is wasted at 0), then cosine decay from --lr, reaching 0 after the last step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    max_bad_steps: int = field(default=3, metadata={"help": "stop after this many non-finite updates in a row"})
    logprob_chunk: int = field(default=128, metadata={"help": "positions per log-prob chunk (memory: chunk x vocab floats per row)"})
    eval_every: int = field(default=50, metadata={"help": "GSM8K test accuracy every N steps and at the end (0: never)"})
    eval_limit: int = field(default=100, metadata={"help": "test questions per evaluation"})
    eval_at_start: bool = field(default=True, metadata={"help": "with --eval-every: also evaluate the starting model (logged as step 0), the baseline of the curves"})
    eval_batch_size: int = field(default=32, metadata={"help": "questions per evaluation batch"})
    log_samples: int = field(default=2, metadata={"help": "completions per step written to samples.jsonl"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps and at the end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    profile_step: int = field(default=0, metadata={"help": "profile this training step (from 1) with torch.profiler: OUT/profile/step_N.txt says how long the device was busy and what took the time, step_N.trace.json.gz is its Chrome trace (0: off; grpo/profiling.py)"})
    seed: int = field(default=0, metadata={"help": "seed of data order and sampling"})
    deterministic: bool = field(default=True, metadata={"help": "on CPU, deterministic kernels (torch.use_deterministic_algorithms): without them, multi-threaded gradient accumulation (embedding backward) varies in the last bits from run to run, and a resumed run is no longer bitwise the same"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (under torchrun: the local GPU)"})
    precision: str = precision_field()
    decode: str = field(default="auto", metadata={"help": "sampling path: auto (static shapes and CUDA graphs on a GPU, "
                                                          "dynamic on a CPU), static, dynamic, or compiled (static with the decode step "
                                                          "through torch.compile: fewer kernels per step on a GPU, ~12 s to compile on a CPU)"})

    def __post_init__(self):
        check_types(self)
        check_decode_mode(self.decode)
        check_precision(self.precision)
        if self.adv_scale not in ADV_SCALES:
            raise ValueError(f"unknown --adv-scale {self.adv_scale!r}: use one of {', '.join(ADV_SCALES)}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"unknown --loss-agg {self.loss_agg!r}: use one of {', '.join(AGGREGATIONS)}")
        if self.old_logprobs not in ("auto", "sampler", "recompute"):
            raise ValueError(f"unknown --old-logprobs {self.old_logprobs!r}: use auto, sampler or recompute")
        if self.rollouts not in ("plain", "mcts"):
            raise ValueError(f"unknown --rollouts {self.rollouts!r}: use plain or mcts")
        if self.mcts_root not in ("puct", "gumbel"):
            raise ValueError(f"unknown --mcts-root {self.mcts_root!r}: use puct or gumbel")
        if self.tree_advantage not in ("outcome", "step", "mix"):
            raise ValueError(f"unknown --tree-advantage {self.tree_advantage!r}: use outcome, step or mix")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown --preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        if self.group_size < 2:
            raise ValueError(f"--group-size must be >= 2, got {self.group_size}: GRPO's advantage compares completions of one prompt")
        check_ranges(self, at_least_1=("steps", "prompts_per_step", "max_new_tokens", "mu", "micro_batch", "save_every",
                                        "keep_checkpoints", "max_bad_steps", "logprob_chunk", "eval_limit",
                                        "eval_batch_size", "mcts_children", "mcts_step_tokens"),
                     at_least_0=("max_minutes", "token_budget", "profile_step", "shots", "beta", "eps_low", "eps_high", "mcts_simulations",
                                 "mcts_c_puct", "warmup_steps", "log_samples", "eval_every", "weight_decay",
                                 "max_grad_norm", "lr", "tree_advantage_weight"),
                     in_0_1=("mcts_prob",), below_1=("eps_low", "adam_beta1", "adam_beta2"))
        if self.profile_step > self.steps:
            raise ValueError(f"--profile-step {self.profile_step} is past the run's last step (--steps {self.steps})")
        from mcts.interface import check_step  # (here, not at the top: mcts imports grpo's rewards)

        check_step(self.mcts_step, "--mcts-step")  # (the tree search would refuse it only once the model has loaded)
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}: GRPO compares different samples of a prompt")
        check_top_p(self.top_p)
        RewardSet.parse(self.rewards)  # an unknown name or a bad weight now, not after the model has loaded
        check_device(self.device)


def warmup_note(cfg: TrainConfig) -> str | None:
    """A note when the warm-up does not end before the run does: the learning rate never reaches --lr (the last step
    runs at steps / (warmup + 1) of it, trainer.warmup_cosine) and never decays. Not an error: a short trial run may
    want it so."""
    if cfg.warmup_steps < cfg.steps:
        return None
    e_g = f"{cfg.steps // 10}, a tenth of the run" if cfg.steps >= 10 else "0"
    return (f"note: --warmup-steps {cfg.warmup_steps} is not below --steps {cfg.steps}: every step is in the warm-up, so the "
            f"learning rate reaches {cfg.steps}/{cfg.warmup_steps + 1} of --lr at most and never decays: give a smaller "
            f"--warmup-steps (e.g. {e_g})")


def small_tree_note(cfg: TrainConfig) -> str | None:
    """A note when a tree cannot give a group's G distinct rollouts: each simulation adds K at most, so --mcts-simulations
    x --mcts-children below --group-size repeats them in turn (tree_rollout.py): a repeated rollout counts more than
    once in its group's mean and std, and with 1 x 1 every row of a group is the same (no advantage: a tree teaches
    nothing)."""
    n = cfg.mcts_simulations * cfg.mcts_children
    if cfg.rollouts != "mcts" or not cfg.mcts_prob or not cfg.mcts_simulations or n >= cfg.group_size:
        return None  # (0 simulations: the default, 2 * ceil(G / K), enough for G)
    return (f"note: --mcts-simulations {cfg.mcts_simulations} x --mcts-children {cfg.mcts_children} give a tree {n} rollout"
            f"{'s' * (n > 1)} at most, fewer than --group-size {cfg.group_size}: they are repeated to fill the group"
            f"{' (every row the same: no advantage, nothing learnt from a tree)' if n == 1 else ''}; leave --mcts-simulations "
            f"out for enough")


def flag_name(name: str) -> str:  # a config field's command-line flag: max_new_tokens -> --max-new-tokens
    return "--" + name.replace("_", "-")


def check_types(cfg) -> None:
    """Each field's value of the type its annotation names (an int where a float goes too). The command line types
    its flags; a config read back from JSON (a resume) may have been edited by hand, and a string where a path or a
    number goes failed later, with a traceback ('model': 5, 'stop': 5)."""
    for name, t in typing.get_type_hints(type(cfg)).items():
        v, kinds = getattr(cfg, name), typing.get_args(t) or (t,)  # str | None -> (str, NoneType)
        if not any(v is None if k is type(None) else isinstance(v, bool) if k is bool else
                   (isinstance(v, (int, float) if k is float else k) and not isinstance(v, bool)) for k in kinds):
            names = {type(None): "null", float: "a number", int: "an integer", str: "a string", bool: "true or false"}
            want = " or ".join(names.get(k, k.__name__) for k in kinds)
            raise TypeError(f"{flag_name(name)} is {v!r}, not {want}")


def check_ranges(cfg, at_least_1=(), at_least_0=(), in_0_1=(), below_1=()) -> None:
    """Range checks of a command's config fields, each failing with one line that names the flag (train, eval and
    sample share them so that one mistake reads the same in every command). No number may be inf or nan: each
    would pass a >= check, then poison a run (an inf temperature samples uniformly; a nan lr trains NaN)."""
    for name, v in vars(cfg).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{flag_name(name)} must be a finite number, got {v}")
        # a count past 2**31 is a typo, and asked of a tensor's shape it fails late: a traceback past 2**63 (an
        # audit's --n-simulations 99999999999999999999), an out-of-memory line after the model loaded, or an eval
        # that runs on without a word (--n 1e11); the seed and a token budget may be larger
        if type(v) is int and v >= 2**31 and name not in ("seed", "token_budget"):
            raise ValueError(f"{flag_name(name)} must be below 2**31, got {v}")
    for names, ok, rule in ((at_least_1, lambda v: v >= 1, "be >= 1"), (at_least_0, lambda v: v >= 0, "be >= 0"),
                            (in_0_1, lambda v: 0 <= v <= 1, "be in [0, 1]"), (below_1, lambda v: 0 <= v < 1, "be in [0, 1)"),
                            (("seed",) if hasattr(cfg, "seed") else (), lambda v: 0 <= v < 2**63, "be in [0, 2**63)")):
        for name in names:
            if not ok(getattr(cfg, name)):
                raise ValueError(f"{flag_name(name)} must {rule}, got {getattr(cfg, name)}")


def check_top_p(top_p: float) -> None:
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")


# What may differ from a run's config.json when it is resumed: when it stops, how it is evaluated, saved and
# logged, where it runs and by which sampling path (--decode: the same distribution, drawn and multiplied in
# another order, as on another device), and where it reads GSM8K from; none of them changes a training step.
# Everything else (learning rate and its schedule over --steps, batch, group, loss, sampling, seed, ...) is the run
# itself: changing it mid-run would make the run neither the one its config.json describes nor one that could be
# reproduced.
RESUME_MAY_CHANGE = ("max_minutes", "token_budget", "eval_every", "eval_limit", "eval_at_start", "eval_batch_size",
                     "log_samples", "save_every", "keep_checkpoints", "device", "decode", "gsm8k", "profile_step")


def _same(name: str, old, new) -> bool:
    """A saved value and a flag's: equal, or (a path flag) the same path written another way ('m/' and 'm')."""
    if old == new:
        return True
    if name in ("model", "gsm8k") and isinstance(old, str) and isinstance(new, str) and old.strip() and new.strip():
        return os.path.normpath(os.path.expanduser(old)) == os.path.normpath(os.path.expanduser(new))
    return False


def is_train_config(saved) -> bool:
    """A parsed config.json that `run.py train` wrote, by the fields every version of it had."""
    return isinstance(saved, dict) and {"steps", "group_size", "prompts_per_step", "lr"} <= saved.keys()


def resumed_config(saved: dict, cfg: "TrainConfig", given: set[str], run_dir: str) -> tuple["TrainConfig", dict]:
    """The config to continue a run with: its saved config, plus the flags given beside --resume that may change
    (RESUME_MAY_CHANGE). -> (config, {field: (old, new)} of what changed). A flag that would change the training
    itself is an error naming it, and the way to train on with new settings: a new run from a checkpoint's weights."""
    fields = TrainConfig.__dataclass_fields__
    if not is_train_config(saved):
        raise ValueError(f"--resume {run_dir}: its config.json is not the config of a `run.py train` run (another "
                         "command wrote over it?): the run cannot be continued as it was")
    was = {k: saved.get(k, fields[k].default) for k in fields}  # (a config.json older than a field: its default)
    changed = {k: (was[k], getattr(cfg, k)) for k in sorted(given & set(fields) - {"resume"}) if not _same(k, was[k], getattr(cfg, k))}
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if fixed:
        flags = ", ".join(f"--{k.replace('_', '-')} (the run has {changed[k][0]!r})" for k in fixed)
        may = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
        raise ValueError(f"--resume {run_dir}: {flags} would change the training itself mid-run; only {may} may change "
                         f"on resume. To train on from its newest checkpoint with new settings: a new run with --model "
                         f"{run_dir} --out-dir NEW_DIR")
    saved_fields = {k: v for k, v in saved.items() if k in fields}  # (a field since removed: dropped)
    try:
        TrainConfig(**{**saved_fields, "resume": run_dir})
    except (TypeError, ValueError) as e:  # a value edited by hand: its check's message, or a str where a number goes
        raise ValueError(f"--resume {run_dir}: its config.json holds a config that cannot run ({e}): restore it from the "
                         "train_config.json of its newest checkpoint") from None
    # the saved config runs: a failure now is a flag's (--profile-step past the run's --steps), said as a new run says it
    return TrainConfig(**{**saved_fields, **{k: new for k, (_, new) in changed.items()}, "resume": run_dir}), changed


# A tiny run for newcomers and CI: the embedded model, 3 steps of 2 prompts x 4 completions of 48 tokens.
PRESETS: dict[str, dict] = {
    "smoke": dict(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=48, micro_batch=8, eval_every=3,
                  eval_limit=4, eval_batch_size=4, eval_at_start=False, save_every=3, warmup_steps=1, lr=1e-5, log_samples=1),
}


def apply_preset(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """The preset's values for every field the user did not set on the command line."""
    if not cfg.preset:
        return cfg
    values = {k: v for k, v in PRESETS[cfg.preset].items() if k not in given}
    return TrainConfig(**{**cfg.__dict__, **values})
