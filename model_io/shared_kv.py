"""SharedKV: G continuations of each of U prompts decode against their prompt's keys/values in place, not copies.

GRPO samples G completions per prompt. Forked the plain way (KVCache.select), every row carries its own copy of
its prompt's keys/values, and every decode step reads all R = U*G copies: with 2-shot GSM8K prompts (~370 slots)
and 64 rows that is 1.1-1.9 GB a step in float32 over a 256-token completion, two to three and a half times the
model's weights, and a third of the sampling time on a CPU (docs/RESULTS.md). Here the prompt's keys/values are
kept once per prompt and the rows' own keys/values (the completion so far) in a small cache of their own; a
decode step's attention is split in two and merged under one softmax:

    scores = [q . K_prompt | q . K_own]  ->  softmax  ->  w_prompt @ V_prompt + w_own @ V_own

The prompt half is one matmul per prompt with the G*g queries of its G rows (g query heads per key/value head)
stacked as a matrix, so each prompt's keys/values are read once a step instead of G times ("Prefix Grouper",
2025, does the same for the training passes: grpo/rollout.py). Rows that finish are dropped from the cache as
usual; their queries' places in the prompt matmul are left as zeros (`member` maps a live row to its place in
the U x G grid), so that matmul keeps its shape. Each prompt is moved to the front of its slots (its padding
last), so its tokens sit at the same places whatever the batch's longest prompt. In float64 a row's numbers then
do not depend on which rows are live or which prompts share its batch (tests/test_shared_kv.py); in float32 they
may differ in the last bits, as those of the copied path (one SDPA call per step) do too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SharedKV:
    k: torch.Tensor  # [L, U, H_kv, P, D] the prompts' keys, each prompt's from slot 0 (its padding last, zeros)
    v: torch.Tensor  # [L, U, H_kv, P, D]
    group_size: int  # G: rows per prompt
    member: torch.Tensor  # [R] long: each cache row's place u * G + j in the U x G grid
    bias: torch.Tensor  # [R, 1, 1, P] additive mask of each row's prompt: 0 on its tokens, -inf on its padding

    @property
    def prompts(self) -> int:
        return self.k.shape[1]

    @property
    def dense(self) -> bool:
        """Every place of the grid holds its row, in order (no row dropped yet): no scatter needed."""
        return self.member.numel() == self.prompts * self.group_size

    def select(self, rows: torch.Tensor) -> "SharedKV":
        """The same prompts for cache rows `rows` [R'] (a subset, in order: what dropping finished rows keeps)."""
        return SharedKV(self.k, self.v, self.group_size, self.member[rows], self.bias[rows])

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """Rows to prompts: [R, H_kv, g, X] -> [U, H_kv, G*g, X], each prompt's G rows stacked (a dropped row's
        place left as zeros)."""
        U, G, (_, Hkv, g, X) = self.prompts, self.group_size, x.shape  # x: [R, H_kv, g, X]
        full = x if self.dense else x.new_zeros(U * G, Hkv, g, X).index_copy_(0, self.member, x)
        return full.view(U, G, Hkv, g, X).transpose(1, 2).reshape(U, Hkv, G * g, X)

    def _rows(self, y: torch.Tensor, g: int) -> torch.Tensor:
        """Prompts to rows, _grid's inverse: [U, H_kv, G*g, X] -> [R, H_kv, g, X]."""
        U, Hkv, _, X = y.shape
        full = y.view(U, Hkv, self.group_size, g, X).transpose(1, 2).reshape(U * self.group_size, Hkv, g, X)
        return full if self.dense else full[self.member]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
               own_bias: torch.Tensor | None = None) -> torch.Tensor:
        """One query per row over its prompt's keys, then its own: q [R, H, 1, D], own keys/values k, v
        [R, H_kv, S, D], own_bias None (all S valid) or additive [R, 1, 1, S]. Returns [R, H, 1, D]."""
        R, H, T, D = q.shape
        Hkv, P, S = k.shape[1], self.k.shape[3], k.shape[2]
        g = H // Hkv
        assert T == 1 and self.member.shape == (R,), "a shared prompt serves one decode token per row"
        assert own_bias is None or own_bias.is_floating_point(), "own_bias is additive (the static step's mask)"
        pk, pv = self.k[layer], self.v[layer]  # [U, H_kv, P, D]
        q = (q * D**-0.5).reshape(R, Hkv, g, D)  # [R, H_kv, g, D] (query head h uses key/value head h // g)
        sp = torch.matmul(self._grid(q), pk.transpose(-1, -2))  # [U, H_kv, G*g, P]: the prompt's keys read once
        sp = self._rows(sp, g) + self.bias  # [R, H_kv, g, P]
        so = torch.matmul(q, k.transpose(-1, -2))  # [R, H_kv, g, S]
        if own_bias is not None:
            so = so + own_bias.view(R, 1, 1, S)
        # one softmax, own slots first: the prompt's tokens then sit at the same places whatever the batch's longest
        # prompt (its padding trails), so a row's numbers do not depend on which prompts share its batch
        w = torch.cat([so, sp], dim=-1)  # [R, H_kv, g, S + P]
        w = w.to(torch.promote_types(w.dtype, torch.float32)).softmax(-1).to(v.dtype)  # bf16: a float32 softmax
        wo, wp = w.split([S, P], dim=-1)
        yp = self._rows(torch.matmul(self._grid(wp), pv), g)  # [R, H_kv, g, D]: the prompt's values read once
        y = yp + torch.matmul(wo, v)  # [R, H_kv, g, D]
        return y.reshape(R, H, 1, D)


def share(k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, group_size: int, dtype: torch.dtype) -> SharedKV:
    """SharedKV over the filled slots of a cache: k, v [L, U, H_kv, P, D], key_mask [U, P] bool (True on each
    prompt's tokens, wherever they sit: a prefill's left padding, or the padding before a tree path that
    `extend` read). Each prompt's tokens are moved to the front of its slots, in order (padding last, as zeros):
    one copy of U prompts, where forking makes U * G."""
    U, P = key_mask.shape
    L, _, Hkv, _, D = k.shape
    n = key_mask.sum(1)  # [U] tokens in each prompt
    valid = torch.arange(P, device=k.device)[None] < n[:, None]  # [U, P] after the move
    src = torch.sort((~key_mask).to(torch.uint8), dim=1, stable=True).indices  # [U, P] tokens' slots first, in order
    src = src[None, :, None, :, None].expand(L, U, Hkv, P, D)
    keep = valid[None, :, None, :, None]
    k = torch.where(keep, k.gather(3, src), torch.zeros((), dtype=k.dtype, device=k.device))
    v = torch.where(keep, v.gather(3, src), torch.zeros((), dtype=v.dtype, device=v.device))
    bias = torch.zeros(U, P, dtype=dtype, device=key_mask.device).masked_fill_(~valid, float("-inf"))
    bias = bias.repeat_interleave(group_size, dim=0).view(U * group_size, 1, 1, P)  # [R, 1, 1, P]
    return SharedKV(k, v, group_size, torch.arange(U * group_size, device=k.device), bias)
