"""Which training prompts each step sees: a pure function of (step, n problems, B prompts per step, seed).

Each epoch is a permutation of the n problems, seeded by seed + epoch as torch's DistributedSampler seeds its
shuffles, and the global batch of step s is positions [s*B, (s+1)*B) of the concatenated epochs. Being a pure
function of the step makes a resumed run see exactly the prompts an uninterrupted one would, on every rank.

When n is not a multiple of B, one batch straddles each epoch boundary: the tail of epoch e and the head of
epoch e+1. Two independent permutations could put the same problem in both, and that batch would then train on
one prompt as two groups (twice its weight, two groups' worth of GRPO advantages for one question). The head of
epoch e+1 is therefore rearranged: any problem already in the batch's tail of epoch e is swapped with the first
later problem of epoch e+1 that is not. Every epoch still visits each problem exactly once, and no batch holds a
problem twice when B <= n (with B > n a batch must repeat problems; nothing is rearranged then).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from data import Problem


def split_shots(train: list[Problem], shots: int, prompts_per_step: int = 1) -> tuple[list[Problem], list[Problem]]:
    """-> (the prompt's worked examples, the problems to train on): the first `shots` train problems are not asked
    (their answers are in every prompt), as eval leaves them out. A step's batch must fit in the rest: with more
    prompts than problems (a small --gsm8k file) a batch repeats problems, and a problem's completions are keyed by
    (seed, step, problem, g), so its copies would sample the same G completions, one group counted twice."""
    examples, rest = train[:shots], train[shots:]
    if not rest:
        raise ValueError(f"--shots {shots}: the train split holds {len(train)} problems, all of them the prompt's worked "
                         "examples: no training questions left; lower --shots")
    if prompts_per_step > len(rest):
        raise ValueError(f"--prompts-per-step {prompts_per_step} is more than the {len(rest)} training problems (after the "
                         f"--shots examples): a step would ask some twice, whose groups sample the same completions; "
                         f"lower --prompts-per-step to at most {len(rest)}")
    return examples, rest


class EpochOrder:
    """Permutations of range(n) per epoch, with the straddling batch's duplicates moved (module docstring).
    Keeps the latest epoch's permutation: steps walk forward, so each epoch is made once."""

    def __init__(self, n: int, batch: int, seed: int):
        if n < 1 or batch < 1:
            raise ValueError(f"need at least one problem and one prompt per step, got n={n}, batch={batch}")
        self.n, self.B, self.seed = n, batch, seed
        self._cached: tuple[int, torch.Tensor] | None = None

    def step(self, step: int) -> list[int]:
        """The global batch of `step`: B problem indices (all processes; split them with distributed.shard)."""
        out = []
        for k in range(step * self.B, (step + 1) * self.B):
            epoch, i = divmod(k, self.n)
            out.append(int(self.permutation(epoch)[i]))
        return out

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s order of the n problems: [n]."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        # an epoch's order depends on the previous epoch's tail only where a batch straddles their boundary;
        # start from the latest epoch at or before this one that begins a batch (epoch 0 always does)
        first = epoch
        while first > 0 and (first * self.n) % self.B != 0:
            first -= 1
        if self._cached is not None and first <= self._cached[0] < epoch:
            first, perm = self._cached[0] + 1, self._cached[1]
        else:
            perm = None
        for e in range(first, epoch + 1):
            perm = self._fresh(e) if perm is None or (e * self.n) % self.B == 0 else self._after(perm, e)
        self._cached = (epoch, perm)
        return perm

    def _fresh(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def _after(self, prev: torch.Tensor, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation, its head cleared of the problems that the straddling batch takes from the
        tail of `prev` (the epoch before)."""
        perm = self._fresh(epoch)
        a = (epoch * self.n) % self.B  # the straddling batch's positions in the previous epoch
        head = self.B - a  # ... and in this one
        if self.B > self.n:  # a batch larger than the data repeats problems anyway
            return perm
        in_tail = torch.isin(perm, prev[self.n - a :])  # [n]
        pos = torch.arange(self.n)
        bad = pos[in_tail & (pos < head)]  # head positions holding a problem the batch already has
        good = pos[~in_tail & (pos >= head)][: len(bad)]  # n - a >= B - a such problems exist: B <= n
        perm[bad], perm[good] = perm[good].clone(), perm[bad].clone()
        return perm
