"""Gumbel root selection with Sequential Halving (Danihelka et al. 2022, "Policy improvement by planning with
Gumbel", ICLR; sections 3-4), as an alternative to PUCT at the root.

Why: with a handful of simulations PUCT at the root spends them by a prior-weighted bonus that has not yet
settled; Sequential Halving spends them evenly over the root's candidates, then on the better half, and so
on; in the paper the final choice provably improves on the policy (their Theorem 1) even with 2 simulations
per child. The guarantee does not carry over here: it needs the candidates to be the Gumbel-top-m actions under
the same noise g, while our candidates are K first steps sampled from the model (with replacement, identical
ones merged) and g is drawn afterwards over them (departure: an action space of all possible steps cannot be
enumerated). What carries over is the schedule and the scoring.

The root's K children here are sampled first steps, all created (and each scored once by its rollout) by the
first simulation. Each later simulation descends through one root child chosen as

    argmax_a  [ g(a) + logit(a) + sigma(q(a)) ]   over the children whose simulation count is the one that
                                                  Sequential Halving schedules next (eq. 8 and section 4)

g ~ Gumbel(0, 1) drawn once per tree, logit = log prior, q the child's mean value min-max normalised over the
root's children, sigma(q) = (c_visit + max_b n(b)) * c_scale * q (eq. 8; c_visit 50, c_scale 1 in the paper).
Below the root the descent stays PUCT (the paper's deterministic non-root selection is not used: departure).
Simulation counts n(a) are kept per root child outside the tree, because a simulation here backs up K values
(one per new child) and so adds K visits, not 1.

Dimension letters: B trees, K root children, S simulations.
"""
from __future__ import annotations

import math

import torch


def considered_visits(m: int, n: int) -> list[int]:
    """Sequential Halving's schedule for m candidates and n simulations: entry s is how many simulations the
    child picked by simulation s must already have. Rounds of ceil(log2 m): in each, every remaining candidate
    gets max(1, floor(n / (log2 m * remaining))) simulations, then the remaining set halves (to no fewer than 2).
    E.g. m=4, n=8: [0, 0, 0, 0, 1, 1, 2, 2] (4 candidates once, then the best 2 twice)."""
    if m <= 1:
        return list(range(n))
    rounds = math.ceil(math.log2(m))
    seq: list[int] = []
    count = [0] * m
    remaining = m
    while len(seq) < n:
        extra = max(1, n // (rounds * remaining))
        for _ in range(extra):
            seq.extend(count[:remaining])
            for i in range(remaining):
                count[i] += 1
        remaining = max(2, remaining // 2)
    return seq[:n]


def considered_table(K: int, n: int) -> torch.Tensor:
    """[K + 1, K + n] long: row m is the schedule of a tree with m root children and n simulations after the
    one that created them (considered_visits(m, m + n): its first m entries, all 0, are that creation), padded
    with its last entry. Trees with different numbers of valid children then read their schedule by indexing,
    not by a Python loop over the batch; simulation s >= 1 of a tree with m children reads column m + s - 1."""
    rows = []
    for m in range(K + 1):
        seq = considered_visits(m, m + n) if m else [0]
        rows.append(seq + [seq[-1]] * (K + n - len(seq)))
    return torch.tensor(rows, dtype=torch.long)


def sigma_q(q: torch.Tensor, valid: torch.Tensor, sims: torch.Tensor, c_visit: float, c_scale: float) -> torch.Tensor:
    """sigma(q_hat) of eq. 8 [B, K]: q min-max normalised over each tree's valid children, scaled by
    (c_visit + max n) * c_scale. A tree whose children all have the same value gets 0 for all of them."""
    big = torch.finfo(q.dtype).max
    lo = torch.where(valid, q, torch.full_like(q, big)).min(-1, keepdim=True).values  # [B, 1]
    hi = torch.where(valid, q, torch.full_like(q, -big)).max(-1, keepdim=True).values  # [B, 1]
    span = hi - lo
    q_hat = torch.where(span > 0, (q - lo) / span.clamp(min=1e-12), torch.zeros_like(q))
    n_max = torch.where(valid, sims, torch.zeros_like(sims)).max(-1, keepdim=True).values.to(q.dtype)  # [B, 1]
    return (c_visit + n_max) * c_scale * q_hat


def root_scores(gumbel: torch.Tensor, log_prior: torch.Tensor, q: torch.Tensor, valid: torch.Tensor,
                sims: torch.Tensor, c_visit: float, c_scale: float) -> torch.Tensor:
    """g + logit + sigma(q) [B, K], -inf where there is no child. All inputs [B, K]."""
    s = gumbel + log_prior + sigma_q(q, valid, sims, c_visit, c_scale)
    return torch.where(valid, s, torch.full_like(s, float("-inf")))


def choose_root_child(scores: torch.Tensor, valid: torch.Tensor, sims: torch.Tensor, considered: torch.Tensor) -> torch.Tensor:
    """The child slot [B] that simulation takes at the root: the best score among the valid children whose
    simulation count equals the schedule's `considered` [B]. A tree where no child has that count (terminal
    children revisited out of turn) falls back to its least-simulated children."""
    due = valid & (sims == considered[:, None])  # [B, K]
    least = valid & (sims == torch.where(valid, sims, torch.full_like(sims, 2**62)).min(-1, keepdim=True).values)
    due = torch.where(due.any(-1, keepdim=True), due, least)
    return torch.where(due, scores, torch.full_like(scores, float("-inf"))).argmax(-1)


def final_root_child(scores: torch.Tensor, valid: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
    """The search's choice at the root [B]: among the children that Sequential Halving kept longest (the most
    simulations), the best g + logit + sigma(q) (section 4, the action A_{n+1})."""
    top = valid & (sims == torch.where(valid, sims, torch.full_like(sims, -1)).max(-1, keepdim=True).values)
    return torch.where(top, scores, torch.full_like(scores, float("-inf"))).argmax(-1)
