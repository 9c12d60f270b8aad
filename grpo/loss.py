"""The GRPO objective as pure tensor functions (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, eq. 3).

Dimension letters: B prompts, G completions per prompt, N = rows of a (micro-)batch (B*G or a slice of it),
T completion tokens.

    A_i        = (r_i - mean(r)) / (std(r) + eps)                               group-relative advantage, eq. 3
    ratio_i,t  = pi(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)
    L_i,t      = -min(ratio * A_i, clip(ratio, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_k3
    KL_k3      = pi_ref / pi - log(pi_ref / pi) - 1                               (Schulman 2020, "k3"; eq. 4)
and the per-token losses are aggregated over the batch as `agg` says (see `aggregate`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ADV_SCALES = ("group", "batch", "none")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards [B, G] -> advantages [B, G].

    group: (r - group mean) / (group std + eps), the GRPO paper; batch: the std over the whole batch
    (Hu et al. 2025, REINFORCE++ style); none: r - group mean only (Dr. GRPO, Liu et al. 2025, sec. 3.1).
    std is the unbiased sample std, as TRL computes it. A group whose rewards are all equal gets exactly zero
    advantage (tested by equality: a float32 mean of equal values can be one ulp off them, and that ulp divided by
    std + eps = 1e-4 would give the whole group one same-signed advantage of up to 1e-3)."""
    assert rewards.dim() == 2, f"rewards must be [B, G], got {tuple(rewards.shape)}"
    if scale not in ADV_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}: use one of {', '.join(ADV_SCALES)}")
    flat = flat_groups(rewards)[:, None]  # [B, 1]
    centered = torch.where(flat, 0.0, rewards - rewards.mean(dim=1, keepdim=True))
    if scale == "none" or rewards.shape[1] < 2:
        return centered
    std = rewards.std(dim=1, keepdim=True) if scale == "group" else rewards.std().expand(rewards.shape[0], 1)
    return torch.where(flat, 0.0, centered / (std + eps))  # flat groups stay 0 even with eps = 0 (no 0/0)


def flat_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[B, G] -> [B] bool: every reward of the group equal to its first (no learning signal in that group)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased, low variance.

    Written expm1(d) - d: in float32, exp(d) next to 1 keeps only ~1e-7 absolute precision, so exp(d) - d - 1
    read 0 (or -6e-8) for every |d| below ~3e-4, the per-token divergences of early training."""
    d = ref_logp - logp
    return torch.expm1(d) - d


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str, n_seqs: float, n_tokens: float, max_len: int) -> torch.Tensor:
    """Reduce per-token losses [N, T] to a scalar, normalised by whole-batch counts so that micro-batches sum to
    exactly the full batch's loss (and gradient):
      seq-mean-token-mean      mean over each sequence's tokens, then over sequences (GRPO paper, eq. 3)
      token-mean               mean over all tokens of the batch (DAPO, Yu et al. 2025, eq. 12)
      seq-mean-token-sum-norm  token sums divided by a constant max length, mean over sequences (Dr. GRPO)"""
    m = mask.to(per_token.dtype)
    if agg == "seq-mean-token-mean":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / n_seqs
    if agg == "token-mean":
        return (per_token * m).sum() / n_tokens
    if agg == "seq-mean-token-sum-norm":
        return (per_token * m).sum() / (n_seqs * max_len)
    raise ValueError(f"unknown loss aggregation {agg!r}: use one of {', '.join(AGGREGATIONS)}")


@dataclass
class LossStats:
    """Token means over this micro-batch's completion tokens (detached, for logging)."""

    clip_low: float  # fraction of tokens with ratio < 1 - eps_low and A < 0 (the lower clip is active)
    clip_high: float  # fraction with ratio > 1 + eps_high and A > 0
    ratio: float  # mean pi / pi_old
    kl: float  # mean k3 KL to the reference (0 when beta = 0)
    tokens: int


def policy_loss(
    logp: torch.Tensor,  # [N, T] log pi of the sampled tokens, with grad
    old_logp: torch.Tensor,  # [N, T] log pi_old (the sampling policy)
    ref_logp: torch.Tensor | None,  # [N, T] log pi_ref, None when beta = 0
    advantages: torch.Tensor,  # [N] per sequence, or [N, T] per token (tree-structured credit)
    mask: torch.Tensor,  # [N, T] bool: completion tokens
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    agg: str = "seq-mean-token-mean",
    n_seqs: float | None = None,  # sequences in the whole batch (default: N, this batch is the whole batch)
    n_tokens: float | None = None,  # completion tokens in the whole batch (default: mask.sum())
    max_len: int | None = None,  # the constant of seq-mean-token-sum-norm (default: T)
) -> tuple[torch.Tensor, LossStats]:
    N, T = logp.shape
    assert old_logp.shape == (N, T) and mask.shape == (N, T) and advantages.shape in ((N,), (N, T)), "shape mismatch"
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs the reference log-probs")
    A = (advantages[:, None] if advantages.dim() == 1 else advantages).to(logp.dtype)  # [N, 1] or [N, T]
    # padding positions hold log-probs of pad tokens that may be anything: zero them first, so that no exp()
    # overflow there can reach the loss or its gradient as inf * 0 = NaN
    logp = torch.where(mask, logp, 0.0)
    old_logp = torch.where(mask, old_logp, 0.0)
    ref_logp = torch.where(mask, ref_logp, 0.0) if ref_logp is not None else None
    ratio = torch.exp(logp - old_logp)  # [N, T]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * A, clipped * A)  # PPO's pessimistic bound (Schulman et al. 2017, eq. 7)
    kl = kl_k3(logp, ref_logp) if beta > 0 else None
    if kl is not None:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, agg, float(N if n_seqs is None else n_seqs),
                     float(mask.sum() if n_tokens is None else n_tokens), T if max_len is None else max_len)
    with torch.no_grad():
        m = mask.float()
        cnt = m.sum().clamp(min=1)
        stats = LossStats(
            clip_low=float((((ratio < 1 - eps_low) & (A < 0)).float() * m).sum() / cnt),
            clip_high=float((((ratio > 1 + eps_high) & (A > 0)).float() * m).sum() / cnt),
            ratio=float((ratio * m).sum() / cnt),
            kl=float((kl * m).sum() / cnt) if kl is not None else 0.0,
            tokens=int(mask.sum()),
        )
    return loss, stats
