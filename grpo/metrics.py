"""A step's metrics (reduced over ranks) and the run logs: metrics.jsonl (one line per step, one per evaluation), TensorBoard event
files, samples.jsonl. Rank 0 writes; others no-op."""
from __future__ import annotations

import errno
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from model_io.checkpoint import write_text_atomic

from . import distributed as D
from .loss import flat_groups

if TYPE_CHECKING:
    from .rollout import Rollout
    from .tree_rollout import TreeStats


def step_metrics(ro: Rollout, rewards_all: torch.Tensor, agg: dict, d: D.Dist, dev: torch.device, mu: int,
                 with_kl: bool = True) -> dict[str, float]:
    """Rewards, completion lengths and the loss's token statistics of one step, over all ranks (TRL's names).
    `rewards_all` [B, G] is already gathered; `agg` holds this rank's loss sums. Also 'completions/tokens', the
    completion tokens of the step over all ranks (the caller turns it into a rate). with_kl=False (beta = 0: no
    reference model, the KL is not measured): no 'kl', where a 0 would read as a policy still at the reference."""
    lengths = D.gather_cat(ro.lengths.to(dev), d).float().cpu()
    truncated = D.gather_cat(torch.tensor([f == "length" for f in ro.finish], device=dev), d).float().cpu()
    loss_stats = torch.tensor([agg[k] for k in ("loss", "clip_low", "clip_high", "ratio", "kl", "entropy", "tokens")],
                              dtype=torch.float64, device=dev)
    s = D.all_reduce_sum(loss_stats, d).cpu().tolist()
    tok = max(s[6], 1.0)
    m = {
        "reward": rewards_all.mean().item(),
        # TRL's reward_std: the mean of the groups' stds (the spread GRPO learns from), not the std of the batch
        "reward_std": rewards_all.std(dim=1).mean().item(),
        "frac_reward_zero_std": flat_groups(rewards_all).float().mean().item(),
    }
    for name, v in ro.per_fn.items():
        v = D.gather_cat(v.to(dev), d).cpu()
        m[f"rewards/{name}/mean"], m[f"rewards/{name}/std"] = v.mean().item(), v.std().item() if v.numel() > 1 else 0.0
    m.update({
        "completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(), "completions/clipped_ratio": truncated.mean().item(),
        "completions/tokens": lengths.sum().item(),
        # a rank's loss has normalisers divided by the world size (its gradient is averaged over ranks): the
        # sum over ranks is world x the batch's loss
        "loss": s[0] / (mu * d.world),
    })
    if s[6]:  # token statistics of the rows that ran forward/backward (with beta = 0, maybe none: then absent)
        m.update({"clip_ratio/low_mean": s[1] / tok, "clip_ratio/high_mean": s[2] / tok, "ratio_mean": s[3] / tok,
                  "entropy": s[5] / tok, **({"kl": s[4] / tok} if with_kl else {})})
    return m


def rollout_token_metrics(plain_tokens: int, tree: TreeStats | None, mcts: bool, d: D.Dist,
                          dev: torch.device) -> dict[str, float]:
    """Tokens sampled for this step's rollouts over all ranks (plain completions + tree searches); with
    `--rollouts mcts` also the tree searches' counts (a rank may have run none: zeros, so every rank reduces)."""
    generated = D.all_reduce_sum(torch.tensor(plain_tokens + (tree.generated_tokens if tree else 0),
                                              dtype=torch.float64, device=dev), d).item()
    m = {"rollout/generated_tokens": generated}
    if mcts:
        st = D.all_reduce_sum(torch.tensor([tree.groups, tree.generated_tokens, tree.trajectory_tokens] if tree else [0, 0, 0],
                                           dtype=torch.float64, device=dev), d).tolist()
        m["rollout/tree_groups"] = st[0]
        if st[0]:
            # sampled by the searches vs what G independent samples of the chosen trajectories' lengths would cost
            m["rollout/tree_generated_tokens_per_group"] = st[1] / st[0]
            m["rollout/tree_tokens_saved_per_group"] = (st[2] - st[1]) / st[0]
    return m


def sample_rows(ro: Rollout, n: int) -> list[dict]:
    """The first `n` completions of a step with their prompt, gold answer, rewards and advantage (samples.jsonl).
    With per-token advantages (--tree-advantage step or mix) the loss does not use the group advantage alone:
    the mean of the row's per-token advantages is given beside it."""
    G = ro.group_size
    rows = [{"prompt": ro.problems[r // G].question, "completion": ro.texts[r], "gold": ro.problems[r // G].answer,
             "reward": ro.rewards.flatten()[r].item(), "advantage": ro.advantages.flatten()[r].item(),
             "rewards": {k: v.flatten()[r].item() for k, v in ro.per_fn.items()}}
            for r in range(min(n, len(ro.texts)))]
    if ro.token_advantages is not None:
        for r, row in enumerate(rows):
            row["token_advantage_mean"] = ro.token_advantages[r][ro.mask[r]].mean().item() if ro.mask[r].any() else 0.0
    return rows


@contextmanager
def naming(path: Path):
    """A write that fails with the disk full (or over quota) names the file: Python's error for a failed write() or
    close() has no filename, so the run's one-line stop said only "No space left on device" (grpo/stops.py)."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


class RunLog:
    """metrics.jsonl, samples.jsonl and TensorBoard events of a run (rank 0 only). The TensorBoard writer opens at
    the first event, so that a command that logs nothing (resuming a finished run) leaves no empty event file."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self._tb, self._purge_step = None, None
        self.tb_dir = run_dir / "tb"
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path, self.samples_path = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"

    @property
    def tb(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            quiet_full_disk_in_tensorboard_thread()
            with naming(self.tb_dir):
                self._tb = SummaryWriter(str(self.tb_dir), purge_step=self._purge_step)
            self._purge_step = None  # once: a writer reopened after close() must not purge again
        return self._tb

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        # a non-finite value (a skipped update's loss) is written as null: JSON has no NaN, and strict readers (jq)
        # refuse the bare NaN json.dumps writes; TensorBoard below gets the value itself
        row = {"step": step, **{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}}
        with naming(self.metrics_path), self.metrics_path.open("a") as f:  # opened per step: a killed run loses no finished line
            f.write(json.dumps(row) + "\n")
        with naming(self.tb_dir):  # (the writer thread's error comes back here, without a filename)
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def logged_evaluation(self, step: int) -> bool:
        """Whether metrics.jsonl holds an evaluation's line for `step` (a torn line does not count)."""
        if not self.metrics_path.is_file():
            return False
        rows = map(metrics_row, self.metrics_path.read_text(errors="replace").splitlines())
        return any(row is not None and row["step"] == step and any(k.startswith("eval/") for k in row) for row in rows)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with naming(self.samples_path), self.samples_path.open("a") as f:
            f.writelines(json.dumps({"step": step, **r}) + "\n" for r in rows)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            with naming(self.tb_dir):
                self.tb.add_text(tag, text, step)

    def purge_after(self, step: int) -> None:
        """On resume: TensorBoard drops the events of steps > `step` (they are about to be run again)."""
        if self.enabled:
            self.close()
            self._purge_step = step + 1

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None  # a later event opens a new writer
            with naming(self.tb_dir):
                tb.close()


def quiet_full_disk_in_tensorboard_thread() -> None:
    """TensorBoard writes its events from a thread: on a full disk that thread printed its own 16-line traceback
    before the main thread, at its next event, met the same error (named there by `naming`, said in one line by
    run.py). Its full-disk error is left to the main thread; any other keeps the traceback."""
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    before = threading.excepthook
    if getattr(before, "_quiet_full_disk", False):
        return

    def hook(args):
        if isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError) and \
                args.exc_value.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        before(args)

    hook._quiet_full_disk = True
    threading.excepthook = hook


def metrics_row(line: str) -> dict | None:
    """A metrics.jsonl line as its row; None for a line that is not one (torn by a kill mid-write, or damaged:
    not a JSON object with a whole-number step)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) and type(row.get("step")) is int else None


def truncate_log(path: Path, last_step: int) -> None:
    """On resume: drop lines of steps after the checkpoint (they will be run again), keeping the file consistent.
    A line that is not a step's (the torn last line of a run killed mid-write, or a damaged one) is dropped too."""
    if not path.is_file():
        return
    rows = [(line, metrics_row(line)) for line in path.read_text(errors="replace").splitlines()]
    keep = [line for line, row in rows if row is not None and row["step"] <= last_step]
    write_text_atomic(path, "".join(l + "\n" for l in keep))  # (a kill or a full disk mid-write: the old log, whole)
