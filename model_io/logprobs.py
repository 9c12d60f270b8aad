"""Log-probabilities of given tokens, computed a chunk of positions at a time.

A full [B, T, V] float32 logits tensor is the memory wall of RL fine-tuning (B=64, T=512, V=152k is 20 GB).
Here the LM head and log-softmax run on `chunk` positions at a time, and under autograd a chunk keeps nothing
of size V for backward: `_ChunkLogProb` saves the hidden states, the targets and the log-normaliser, and its
backward recomputes the logits once. (torch.utils.checkpoint would do the same with less code, but it reruns
the whole forward: the logsumexp and the logging entropy again, ~25% more time on the LM head here.)
"""
from __future__ import annotations

import torch

from .model import Transformer


class _ChunkLogProb(torch.autograd.Function):
    """lp[b, t] = logits[b, t, y] - logsumexp(logits[b, t]) with logits = h W^T, as float32 [B, c].

    d lp / d logits = onehot(y) - softmax(logits), so backward needs only the softmax, rebuilt from the saved
    log-normaliser as exp(logits - lse) after one recomputed matmul."""

    @staticmethod
    def forward(ctx, h, weight, targets, dtype, want_entropy):
        with torch.autocast(h.device.type, enabled=False):
            logits = (h.to(dtype) @ weight.to(dtype).T).float()  # [B, c, V], float32: rare tokens keep precision
            lse = torch.logsumexp(logits, dim=-1)  # [B, c]
            lp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse  # [B, c]
            ent = None
            if want_entropy:  # for logging only: H = -sum p log p, with log p = logits - lse
                logp = logits.sub_(lse[..., None])  # in place: logits are not needed any more
                ent = -logp.exp().mul_(logp).sum(-1)  # [B, c] (p log p in p's memory: one [B, c, V] temporary)
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(*([ent] if ent is not None else []))
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, _g_ent):
        h, weight, targets, lse = ctx.saved_tensors
        dt = ctx.dtype
        w = weight.to(dt)
        with torch.autocast(h.device.type, enabled=False):
            dlogits = (h.to(dt) @ w.T).float().sub_(lse[..., None]).exp_().mul_(-g_lp[..., None])  # -g * softmax
            dlogits.scatter_add_(-1, targets[..., None], g_lp[..., None])  # + g * onehot(y)
            dlogits = dlogits.to(dt)  # [B, c, V]
            grad_h = (dlogits @ w).to(h.dtype) if ctx.needs_input_grad[0] else None
            grad_w = (dlogits.flatten(0, -2).T @ h.to(dt).flatten(0, -2)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


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
    # float32 at least, under bf16 autocast too: see Transformer.logits (an FP32 head, MiniMax-M1 sec. 3.2)
    dtype = torch.promote_types(weight.dtype, torch.float32)
    parts = [_ChunkLogProb.apply(hidden[:, s : s + chunk], weight, targets[:, s : s + chunk], dtype, with_entropy)
             for s in range(0, T, chunk)]
    lp = torch.cat([p[0] for p in parts], dim=1)
    return (lp, torch.cat([p[1] for p in parts], dim=1)) if with_entropy else lp


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
