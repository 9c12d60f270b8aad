"""Log-probabilities of given tokens, computed a chunk of positions at a time.

A full [B, T, V] float32 logits tensor is the memory wall of RL fine-tuning (B=64, T=512, V=152k is 20 GB).
Here the LM head and log-softmax run on `chunk` positions at a time, and under autograd each chunk is
checkpointed: backward recomputes its logits instead of keeping them, so only the [B, T, C] hidden states and
[B, chunk, V] for one chunk are ever alive.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .model import Transformer


def _chunk_logprobs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False):
    logits = (h @ weight.T).float()  # [B, c, V], float32 so that log-probs of rare tokens keep their precision
    lse = torch.logsumexp(logits, dim=-1)  # [B, c]
    lp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse  # [B, c]
    if not with_entropy:
        return lp
    with torch.no_grad():  # for logging only: H = logsumexp - sum p * logits
        ent = lse - (logits.softmax(-1) * logits).sum(-1)
    return lp, ent


def logprobs_from_hidden(
    hidden: torch.Tensor,  # [B, T, C] final-normed hidden states
    weight: torch.Tensor,  # [V, C] LM head
    targets: torch.Tensor,  # [B, T] token whose log-prob is wanted at each position
    chunk: int = 128,
    with_entropy: bool = False,
):
    """log p(targets[b, t] | hidden[b, t]) as float32 [B, T]; with_entropy: also the entropy [B, T] (detached)."""
    B, T, _ = hidden.shape
    assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
    parts = []
    for s in range(0, T, chunk):
        h, y = hidden[:, s : s + chunk], targets[:, s : s + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            parts.append(checkpoint(_chunk_logprobs, h, weight, y, with_entropy, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, weight, y, with_entropy))
    if not with_entropy:
        return torch.cat(parts, dim=1)
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def token_logprobs(
    model: Transformer,
    tokens: torch.Tensor,  # [B, T] prompt + completion, left-padded
    key_mask: torch.Tensor | None = None,  # [B, T] bool, False on padding
    positions: torch.Tensor | None = None,  # [B, T]
    chunk: int = 128,
) -> torch.Tensor:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T-1, float32 [B, T-1] (temperature 1)."""
    if positions is None and key_mask is not None:
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model.hidden(tokens, positions=positions, key_mask=key_mask)[:, :-1]  # [B, T-1, C]
    return logprobs_from_hidden(hidden, model.lm_head.weight, tokens[:, 1:], chunk)
