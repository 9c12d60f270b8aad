"""KVCache: keys and values of every layer, allocated once per sampling call.

Rows of a batch share time slots: prompts are left-padded so that every row's next token lands in slot `length`.
`key_mask` marks the slots that hold real tokens (False for left padding), so padded rows attend only to
their own tokens. Forking (tree search, GRPO groups) selects rows by index: one prefix, many continuations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .shared_kv import SharedKV


@dataclass
class KVCache:
    k: torch.Tensor  # [L, B, H_kv, S, D]
    v: torch.Tensor  # [L, B, H_kv, S, D]
    key_mask: torch.Tensor  # [B, S] bool: slot holds a real token
    length: int = 0  # slots filled so far, the same for every row
    # static decoding (model_io/static_decode.py): the write slot as a device tensor [1], so that a step has fixed
    # shapes and needs no host value; attention then reads all `capacity` slots under key_mask
    slot: torch.Tensor | None = None
    # G rows per prompt reading their prompt's keys/values in place (model_io/shared_kv.py): k/v then hold only
    # the rows' own tokens, from slot 0
    prefix: SharedKV | None = None

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, capacity: int, device, dtype) -> "KVCache":
        """Uninitialised slots: every slot below `length` is written before it is read (padding included), so
        zero-filling the whole cache (hundreds of MB per fork in tree search) is skipped."""
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, capacity, cfg.head_dim)
        return cls(
            k=torch.empty(shape, device=device, dtype=dtype),
            v=torch.empty(shape, device=device, dtype=dtype),
            key_mask=torch.zeros(batch, capacity, device=device, dtype=torch.bool),
        )

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def select(self, rows: torch.Tensor, capacity: int | None = None) -> "KVCache":
        """A new cache holding `rows` (LongTensor [B']) of this one, repeats allowed, with room for `capacity` slots.

        This copies the selected rows once; the source cache is left as it was, so one prefix can be forked
        into many children (each child then writes its own continuation)."""
        capacity = self.capacity if capacity is None else capacity
        if capacity < self.length:
            raise ValueError(f"capacity {capacity} is smaller than the {self.length} filled slots")
        n = self.length
        out = KVCache.empty_like(self, rows.numel(), capacity)
        out.k[:, :, :, :n] = self.k[:, rows, :, :n]
        out.v[:, :, :, :n] = self.v[:, rows, :, :n]
        out.key_mask[:, :n] = self.key_mask[rows, :n]
        out.length = n
        out.prefix = None if self.prefix is None else self.prefix.select(rows)
        return out

    @classmethod
    def empty_like(cls, other: "KVCache", batch: int, capacity: int) -> "KVCache":
        L, _, H, _, D = other.k.shape
        z = lambda: torch.empty((L, batch, H, capacity, D), device=other.k.device, dtype=other.k.dtype)  # noqa: E731
        return cls(k=z(), v=z(), key_mask=torch.zeros(batch, capacity, device=other.k.device, dtype=torch.bool))
