"""The search tree as a dataclass of preallocated tensors (after mctx's `Tree`, Danihelka et al. 2022).

Dimension letters: B trees searched in lockstep, N node slots per tree, K children per node.
All N slots are allocated up front; nodes are appended in order (node ids 0..num_nodes-1), the root is 0.
`select`, `expand`, `backup` (and `revalue`, which rebuilds the value sums when backed-up values change) work on
all B trees at once; they loop only over depth, never over the batch or over children, and batch elements never
interact (searching B trees together gives the same trees as searching each alone).

PUCT (AlphaZero, Silver et al. 2018, "Methods"; the form of Rosin 2011):
    score(child) = Q(child) + c_puct * P(child) * sqrt(N(parent)) / (1 + N(child))
Q of a visited child is its mean backed-up value, value_sum / visits. An unvisited child has no value of its own:
it takes its parent's mean value ("first-play urgency = parent Q", as in Leela Zero without the reduction), so
that exploring it is neither favoured nor penalised against its visited siblings beyond the prior term; for an
unvisited parent, 0. Ties go to the lowest child index (torch.argmax returns the first maximum).
N counts backed-up values, and mcts/search.py backs up K per simulation (one per sampled child), so N(parent)
and N(child) both grow about K times faster than AlphaZero's one-per-simulation count: the exploration term is
then about 1/sqrt(K) of AlphaZero's at the same c_puct (c_puct 1 at K=4 explores like 0.5 there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ROOT = 0
NO_PARENT = -1
UNEXPANDED = -1


@dataclass
class Tree:
    visits: torch.Tensor  # [B, N] float: values backed up through the node (mcts/search.py backs up K per simulation)
    value_sum: torch.Tensor  # [B, N] float: sum of the values backed up through the node
    prior: torch.Tensor  # [B, N] float: P(node) given its parent
    parent: torch.Tensor  # [B, N] long: NO_PARENT for the root and for unused slots
    depth: torch.Tensor  # [B, N] long: root 0
    terminal: torch.Tensor  # [B, N] bool: the node ends an answer; never expanded
    children: torch.Tensor  # [B, N, K] long: node ids, UNEXPANDED where none
    num_nodes: torch.Tensor  # [B] long: nodes in use (ids 0 .. num_nodes-1)

    @classmethod
    def empty(cls, batch_size: int, max_nodes: int, max_children: int, device="cpu") -> "Tree":
        """Only the root exists, unexpanded, with zero visits."""
        B, N, K = batch_size, max_nodes, max_children
        if N < 1 or K < 1:
            raise ValueError(f"a tree needs max_nodes >= 1 and max_children >= 1, got {N}, {K}")
        z = lambda dtype: torch.zeros(B, N, dtype=dtype, device=device)  # noqa: E731
        return cls(
            visits=z(torch.float32), value_sum=z(torch.float32), prior=z(torch.float32),
            parent=torch.full((B, N), NO_PARENT, dtype=torch.long, device=device), depth=z(torch.long),
            terminal=z(torch.bool), children=torch.full((B, N, K), UNEXPANDED, dtype=torch.long, device=device),
            num_nodes=torch.ones(B, dtype=torch.long, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.visits.shape[0]

    @property
    def max_nodes(self) -> int:
        return self.visits.shape[1]

    @property
    def max_children(self) -> int:
        return self.children.shape[2]

    def q(self) -> torch.Tensor:
        """Mean value per node [B, N], 0 where unvisited."""
        return torch.where(self.visits > 0, self.value_sum / self.visits.clamp(min=1), torch.zeros_like(self.value_sum))

    def is_leaf(self, node: torch.Tensor) -> torch.Tensor:
        """node [B] -> [B] bool: no children yet."""
        b = torch.arange(self.batch_size, device=node.device)
        return (self.children[b, node] == UNEXPANDED).all(-1)


def puct_scores(tree: Tree, node: torch.Tensor, c_puct: float) -> torch.Tensor:
    """PUCT score of each child of `node` [B] -> [B, K]; -inf where there is no child."""
    B = tree.batch_size
    b = torch.arange(B, device=node.device)
    kids = tree.children[b, node]  # [B, K]
    valid = kids != UNEXPANDED
    k = kids.clamp(min=0)
    bk = b[:, None].expand_as(k)
    n_child = tree.visits[bk, k]  # [B, K]
    q_parent = tree.q()[b, node][:, None]  # [B, 1]
    q_child = torch.where(n_child > 0, tree.value_sum[bk, k] / n_child.clamp(min=1), q_parent)
    u = c_puct * tree.prior[bk, k] * torch.sqrt(tree.visits[b, node])[:, None] / (1 + n_child)
    return torch.where(valid, q_child + u, torch.full_like(q_child, float("-inf")))


def select(tree: Tree, c_puct: float, start: torch.Tensor | None = None) -> torch.Tensor:
    """Descend from the root (or from `start` [B], e.g. a root child picked by Gumbel selection) by PUCT, all
    B trees in lockstep, to a node without children or a terminal node. Returns the leaf ids [B].
    One loop iteration per depth level."""
    B = tree.batch_size
    b = torch.arange(B, device=tree.visits.device)
    node = torch.full((B,), ROOT, dtype=torch.long, device=b.device) if start is None else start.clone()
    active = ~tree.is_leaf(node) & ~tree.terminal[b, node]
    while bool(active.any()):
        best = puct_scores(tree, node, c_puct).argmax(-1)  # [B]
        nxt = tree.children[b, node, best]
        node = torch.where(active, nxt, node)
        active = active & ~tree.is_leaf(node) & ~tree.terminal[b, node]
    return node


def expand(tree: Tree, leaf: torch.Tensor, prior: torch.Tensor, valid: torch.Tensor | None = None,
           terminal: torch.Tensor | None = None) -> torch.Tensor:
    """Add up to K children under each leaf [B], in place. prior [B, K] probabilities; valid [B, K] which
    children to add (default all); terminal [B, K] which new children end an answer.
    Returns their node ids [B, K], UNEXPANDED where not valid. Node ids are appended in child order."""
    B, K = prior.shape
    assert leaf.shape == (B,) and B == tree.batch_size and K <= tree.max_children, "shape mismatch"
    valid = torch.ones(B, K, dtype=torch.bool, device=prior.device) if valid is None else valid
    valid = valid & ~tree.terminal[torch.arange(B, device=leaf.device), leaf][:, None]  # terminals stay leaves
    ids = tree.num_nodes[:, None] + valid.long().cumsum(-1) - 1  # [B, K]
    ids = torch.where(valid, ids, torch.full_like(ids, UNEXPANDED))
    if bool((tree.num_nodes + valid.sum(-1) > tree.max_nodes).any()):
        raise ValueError(f"tree full: {tree.max_nodes} node slots; size it from the simulation budget")
    bk = torch.arange(B, device=leaf.device)[:, None].expand(B, K)[valid]  # [M] tree of each new node
    nk = ids[valid]  # [M]
    tree.parent[bk, nk] = leaf[:, None].expand(B, K)[valid]
    tree.depth[bk, nk] = tree.depth[torch.arange(B, device=leaf.device), leaf][:, None].expand(B, K)[valid] + 1
    tree.prior[bk, nk] = prior[valid].to(tree.prior.dtype)
    if terminal is not None:
        tree.terminal[bk, nk] = terminal[valid]
    slot = torch.arange(K, device=leaf.device)[None].expand(B, K)[valid]
    tree.children[bk, leaf[:, None].expand(B, K)[valid], slot] = nk
    tree.num_nodes += valid.sum(-1)
    return ids


def backup(tree: Tree, leaf: torch.Tensor, value: torch.Tensor) -> Tree:
    """Add `value` to value_sum and 1 to visits of `leaf` and every ancestor up to the root, in place.
    leaf and value are [B], or [B, M] to back up M values per tree at once (UNEXPANDED leaves are skipped).
    One loop iteration per depth level."""
    assert leaf.shape == value.shape and leaf.shape[0] == tree.batch_size, "leaf and value must both be [B] or [B, M]"
    b = torch.arange(tree.batch_size, device=leaf.device).view(-1, *([1] * (leaf.dim() - 1))).expand_as(leaf)
    node, value = leaf.clone(), value.to(tree.value_sum.dtype)
    live = node != UNEXPANDED
    while bool(live.any()):
        bl, nl = b[live], node[live]
        tree.visits.index_put_((bl, nl), torch.ones_like(value[live]), accumulate=True)
        tree.value_sum.index_put_((bl, nl), value[live], accumulate=True)
        node = torch.where(live, tree.parent[b, node.clamp(min=0)], node)
        live = live & (node != NO_PARENT)
    return tree


def revalue(tree: Tree, leaf: torch.Tensor, value: torch.Tensor, weight: torch.Tensor) -> Tree:
    """Rebuild value_sum from what was backed up: value [B, M] went up from node `leaf` [B, M] `weight` [B, M]
    times (UNEXPANDED leaves skipped); visits are left as they are. With the values first backed up, value_sum
    comes out as `backup` left it (up to float summation order). For values that change after they were backed
    up: self-consistency scores a rollout by agreement with the answers found so far, and later simulations find
    more (mcts/search.py, `rescore`). One loop iteration per depth level."""
    assert leaf.shape == value.shape == weight.shape and leaf.shape[0] == tree.batch_size, "leaf, value, weight: [B, M]"
    b = torch.arange(tree.batch_size, device=leaf.device)[:, None].expand_as(leaf)
    node, amount = leaf.clone(), (value * weight).to(tree.value_sum.dtype)
    tree.value_sum.zero_()
    live = node != UNEXPANDED
    while bool(live.any()):
        tree.value_sum.index_put_((b[live], node[live]), amount[live], accumulate=True)
        node = torch.where(live, tree.parent[b, node.clamp(min=0)], node)
        live = live & (node != NO_PARENT)
    return tree
