"""Counter-based random numbers for sampling: one uniform per (row key, token index), computed on the device.

Why: GRPO and tree search give every sampled row its own randomness, keyed by what is sampled (seed, step,
prompt, completion), so that a row's tokens do not depend on which other rows share its batch or process. With
one torch.Generator per row that costs a kernel launch (and on a GPU a host round trip) per row per token, and
it rules out static-shape decoding, whose rows cannot each advance a generator inside one batched op. A hash of
(key, t) needs no state: the uniforms of all R rows are one short chain of integer ops on [R] tensors, the same
on the static and the dynamic path, whichever rows are still alive (counter-based RNG: Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3").

The hash is Chris Wellons' `lowbias32` (2018, public domain; a 32-bit integer hash with near-ideal avalanche),
applied three times to mix the two 32-bit words of a row's key with the token index. int64 tensors hold the
32-bit values; products are formed in 16-bit halves so that nothing overflows int64 (torch has no uint32
multiply on every device). Uniforms get 53 bits from two 32-bit hashes.

Dimension letters: R rows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and c < 2^32, without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return ((((hi * c) & 0xFFFF) << 16) + lo * c) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
    x *= 0x846ca68b; x ^= x >> 16 (all mod 2^32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key_hash(key: str) -> int:
    """64 bits from a string key, so that randomness is tied to what is sampled (seed, step, prompt, row) rather
    than to batch order or process: GRPO shards, resumed runs and tree searches reproduce their draws."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class RowKeys:
    """Per-row random streams: row r's t-th draw is a pure function of (words[r], t)."""

    words: torch.Tensor  # [R, 2] int64: the two 32-bit halves of each row's 64-bit key

    @classmethod
    def from_names(cls, names: Sequence[str], device="cpu") -> "RowKeys":
        """Keys from strings (key_hash), e.g. f"{seed}/{step}/{prompt}/{g}"."""
        k = [key_hash(n) for n in names]
        return cls(torch.tensor([[v & MASK32, v >> 32] for v in k], dtype=torch.long, device=device).view(len(k), 2))

    def __len__(self) -> int:
        return self.words.shape[0]

    def uniform(self, rows: torch.Tensor, t: int) -> torch.Tensor:
        """u in [0, 1), float64 [r]: draw number t of rows `rows` [r] (indices into the keys). Both key words
        enter the first hash (rows sharing one word must not draw alike); 53 bits, at most 1 - 2^-53."""
        w = self.words.to(rows.device)[rows]  # [r, 2]
        h1 = hash32(w[:, 0] ^ hash32(w[:, 1] ^ hash32(torch.full_like(w[:, 0], t))))
        h2 = hash32(w[:, 1] ^ h1)
        return ((h1 << 21) + (h2 >> 11)).double().div_(2.0**53)
