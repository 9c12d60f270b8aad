"""Rollouts: G completions per prompt from the sampler, their rewards and group advantages.

Also the teacher-forced side: the log-probs that the policy (or the reference) gives to the sampled
completions, a micro-batch at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from data import Problem, StopOnText
from model_io import SamplingConfig, Transformer, generate
from model_io.logprobs import logprobs_from_hidden
from model_io.sampler import row_rng
from model_io.model import SharedPrefix

from .loss import group_advantages
from .rewards import RewardSet


@dataclass
class Rollout:
    problems: list[Problem]  # [B]
    prompts: list[list[int]]  # [B] prompt token ids
    completions: torch.Tensor  # [B*G, T] sampled ids, pad after each row's length; row b*G + g
    old_logp: torch.Tensor  # [B*G, T] float32 log-probs under the sampling policy (temperature 1)
    mask: torch.Tensor  # [B*G, T] bool: completion tokens
    finish: list[str]  # [B*G] "eos" | "stop" | "length"
    texts: list[str]  # [B*G] decoded completions
    rewards: torch.Tensor  # [B, G] weighted total
    per_fn: dict[str, torch.Tensor]  # reward name -> [B, G] unweighted
    advantages: torch.Tensor  # [B, G]
    forward_tokens: int  # tokens the sampler ran through the model
    token_advantages: torch.Tensor | None = None  # [B*G, T] per-token advantages (tree rollouts); None: per sequence

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]

    @property
    def lengths(self) -> torch.Tensor:  # [B*G]
        return self.mask.sum(-1)


def row_generators(seed: int, step: int, prompt_ids: Sequence[int], G: int, device):
    """One random stream per completion, keyed by (seed, step, prompt's dataset index, g): a completion's
    randomness does not depend on which process or batch samples it, so resuming and sharding reproduce it.
    (Generators on a CPU, counter-based RowKeys on a GPU: model_io.sampler.row_rng.)"""
    return row_rng([f"{seed}/{step}/{pid}/{g}" for pid in prompt_ids for g in range(G)], device)


@torch.no_grad()
def collect(
    model: Transformer,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[Sequence[int]],
    G: int,
    sampling: SamplingConfig,
    rewards: RewardSet,
    generators,
    stop: StopOnText | None = None,
    adv_scale: str = "group",
) -> Rollout:
    B = len(problems)
    res = generate(model, prompts, sampling, generators, n=G, stop=stop, pad_id=tokenizer.pad_token_id)
    T = res.tokens.shape[1]
    mask = torch.arange(T, device=res.tokens.device)[None] < res.lengths[:, None]  # [B*G, T]
    texts = [tokenizer.decode(res.row(r), skip_special_tokens=True) for r in range(B * G)]
    answers = [p.answer for p in problems for _ in range(G)]
    rb = rewards(texts, answers=answers, completion_ids=[res.row(r) for r in range(B * G)])
    total = torch.tensor(rb.total, dtype=torch.float32).view(B, G)  # [B, G]
    per_fn = {k: torch.tensor(v, dtype=torch.float32).view(B, G) for k, v in rb.per_fn.items()}
    return Rollout(
        problems=list(problems), prompts=[list(p) for p in prompts], completions=res.tokens, old_logp=res.logprobs,
        mask=mask, finish=res.finish, texts=texts, rewards=total, per_fn=per_fn,
        advantages=group_advantages(total, adv_scale), forward_tokens=res.forward_tokens,
    )


def completion_logprobs(
    model: Transformer,
    rollout: Rollout,
    rows: torch.Tensor,  # [n] rows of the rollout
    T: int,  # completion positions to score (the longest completion among `rows`)
    pad_id: int,
    chunk: int = 128,
    share_prompt: bool = True,
    with_entropy: bool = True,
):
    """log pi(completion tokens) [n, T] (with grad when enabled) and the per-token entropy [n, T] (detached);
    with_entropy=False: the log-probs alone.

    share_prompt: each distinct prompt among `rows` goes through the model once and its rows attend to its
    keys/values ("Prefix Grouper", 2025): with 150-token prompts, 64-token completions and 4 rows per prompt
    that is about 2x fewer tokens through forward and backward. Off: every row is prompt + completion."""
    G = rollout.group_size
    dev = model.device
    of_row = rows // G  # [n] prompt of each row
    uniq, inv = torch.unique(of_row, return_inverse=True) if share_prompt else (of_row, torch.arange(len(rows)))
    prompts = [rollout.prompts[int(b)] for b in uniq]
    U, P = len(prompts), max(map(len, prompts))
    ptok = torch.full((U, P), pad_id, dtype=torch.long)
    pmask = torch.zeros(U, P, dtype=torch.bool)
    for u, p in enumerate(prompts):  # left padding: every prompt ends at slot P-1
        ptok[u, P - len(p):] = torch.as_tensor(p)
        pmask[u, P - len(p):] = True
    ptok, pmask, inv = ptok.to(dev), pmask.to(dev), inv.to(dev)
    comp = rollout.completions[rows, :T].to(dev)  # [n, T]
    cmask = rollout.mask[rows, :T].to(dev)  # [n, T]
    plen = pmask.sum(-1)  # [U]
    ppos = (pmask.long().cumsum(-1) - 1).clamp(min=0)  # [U, P]
    cpos = plen[inv][:, None] + torch.arange(T, device=dev)  # [n, T]
    if share_prompt:
        shared = SharedPrefix(key_mask=pmask)
        hp = model.hidden(ptok, positions=ppos, key_mask=pmask, shared=shared)  # [U, P, C], keys/values collected
        shared.rows = inv
        hc = model.hidden(comp, positions=cpos, key_mask=cmask, shared=shared)  # [n, T, C]
        # completion token 0 is predicted at the prompt's last slot, token t at the row's slot t-1
        hidden = torch.cat([hp[inv, -1:], hc[:, :-1]], dim=1)  # [n, T, C]
    else:
        tokens = torch.cat([ptok, comp], dim=1)  # [n, P + T]
        key_mask = torch.cat([pmask, cmask], dim=1)
        positions = torch.cat([ppos, cpos], dim=1)
        hidden = model.hidden(tokens, positions=positions, key_mask=key_mask)[:, P - 1 : P + T - 1]  # [n, T, C]
    return logprobs_from_hidden(hidden, model.lm_head.weight, comp, chunk, with_entropy=with_entropy)


@torch.no_grad()
def teacher_forced_logprobs(model: Transformer, rollout: Rollout, micro: list[torch.Tensor], pad_id: int, chunk: int,
                            autocast) -> torch.Tensor:
    """log pi(completion tokens) [B*G, T] of every row in the micro-batches `micro` (each [n] rows), without grad,
    under `autocast` (the training pass's precision): the old policy's (recomputed) or the reference's; 0 elsewhere."""
    out = torch.zeros_like(rollout.old_logp)  # [B*G, T]
    for rows in micro:
        T = int(rollout.mask[rows].sum(-1).max())
        with autocast():
            lp = completion_logprobs(model, rollout, rows, T, pad_id, chunk, with_entropy=False)  # [n, T]
        out[rows, :T] = lp.to(out.device)
    return out
