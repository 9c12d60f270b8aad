"""Tree-structured rollouts for GRPO ("MCTS-augmented GRPO"): a batched search produces each prompt's group, and
its tree gives credit to individual reasoning steps.

For a prompt chosen for the tree, `mcts.search` runs with a value that may use the gold answer (training only);
its finished rollouts are whole answers from the root, and G distinct ones (in creation order) form the group.
Advantages (`--tree-advantage`):
  outcome  the GRPO group advantage of each trajectory (DeepSeekMath eq. 3), given to all its tokens
  step     each token gets the advantage of the node that produced it,  A(n) = V(n) - V(parent(n)),  where V(n)
           is the mean reward of the rollouts through n, finished or cut off by the token limit: a step is
           credited with how much it changed the expected outcome. This is the local term of TreeRL's process
           signal (Hou et al. 2025, arXiv 2506.11902, sec. 3; TreeRPO, Yang et al. 2025) alone: TreeRL adds a
           global term V(n) - V(root) and divides the sum by sqrt(leaves under n); here `mix` adds the
           trajectory's outcome advantage instead. Tokens of the rollout's tail after its last node take that
           node's advantage.
  mix      outcome + weight * step
Sibling trajectories share their path's tokens, which were generated once (counted in the metrics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from data import Problem
from mcts.interface import Candidates, SearchConfig
from mcts.search import search
from model_io import Transformer
from model_io.sampler import key_uniform

from .loss import group_advantages
from .rewards import RewardSet
from .rollout import Rollout

TREE_ADVANTAGES = ("outcome", "step", "mix")


def node_values(parent: torch.Tensor, leaf: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """V [N]: the mean reward of the trajectories passing through each node (0 where none).

    parent [N] (-1 at the root), leaf [M] the deepest node of each trajectory, reward [M]. Loops over depth only."""
    N = parent.shape[0]
    total, count = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    node, live = leaf.clone(), torch.ones_like(leaf, dtype=torch.bool)
    while bool(live.any()):
        total.index_add_(0, node[live], reward[live].double())
        count.index_add_(0, node[live], torch.ones(int(live.sum()), dtype=torch.float64))
        nxt = parent[node.clamp(min=0)]
        live = live & (nxt >= 0)
        node = torch.where(live, nxt, node)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).float()


def step_advantages(parent: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """A [N] = V(n) - V(parent(n)); 0 at the root."""
    return torch.where(parent >= 0, V - V[parent.clamp(min=0)], torch.zeros_like(V))


def cycle_to(items: list, G: int) -> list:
    """G items: `items` repeated in turn ([a, b, c] -> a b c a b c a b for G = 8); a repeated sample is still a
    sample, and cycling keeps each distinct one's weight in the group as even as G allows."""
    return [items[i % len(items)] for i in range(G)] if len(items) < G else items


def use_tree(seed: int, step: int, prompt_id: int, p: float) -> bool:
    """Per prompt, the tree with probability p (a hash, not the global RNG: p = 0 leaves every other draw alone)."""
    if p <= 0:
        return False
    return key_uniform(f"tree/{seed}/{step}/{prompt_id}") < p


@dataclass
class TreeStats:
    groups: int
    generated_tokens: int  # sampled by the searches
    trajectory_tokens: int  # in the G chosen trajectories: what G independent samples of those lengths would cost


@torch.no_grad()
def collect_tree(
    model: Transformer,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[Sequence[int]],
    prompt_ids: Sequence[int],
    G: int,
    scfg: SearchConfig,
    rewards: RewardSet,
    seed: int,
    step: int,
    advantage: str = "outcome",
    weight: float = 1.0,
    adv_scale: str = "group",
) -> tuple[Rollout, TreeStats]:
    if advantage not in TREE_ADVANTAGES:
        raise ValueError(f"unknown --tree-advantage {advantage!r}: use one of {', '.join(TREE_ADVANTAGES)}")
    golds = [p.answer for p in problems]
    scale = max(sum(w for w in rewards.weights.values() if w > 0), 1e-8)

    def value(c: Candidates) -> list[float]:  # training may look at the gold answer
        got = rewards(c.texts, answers=[golds[t] for t in c.trees], completion_ids=c.ids).total
        return [v / scale for v in got]

    found = search(model, tokenizer, prompts, scfg, [seed * 1_000_003 + step * 10_007 + q for q in prompt_ids], seed, value)
    groups, token_adv, rows_ids, rows_lp, finish, texts = [], [], [], [], [], []
    gen = traj = 0
    for b, f in enumerate(found):
        pick, seen = [], set()
        for rec in sorted(f.records, key=lambda r: not r.finished):  # finished first, creation order within
            if tuple(rec.ids) not in seen and rec.ids:
                seen.add(tuple(rec.ids))
                pick.append(rec)
            if len(pick) == G:
                break
        pick = cycle_to(pick or f.records[:1], G)  # too few distinct rollouts: repeat them in turn
        groups.append(pick)
        gen += f.generated_tokens
        traj += sum(len(r.ids) for r in pick)
        # step credit from every rollout of the tree, each with its reward: one cut off by the token limit counts with
        # what its text earns, as in the group's outcome (TreeRL's V(n) averages the outcomes of all leaves under n);
        # left out, a step whose continuations ramble past the limit would keep the credit of its few
        # finished ones, and a node with none would get V = 0 as if its rollouts were scored
        parent = torch.tensor(f.parent)
        A_node = torch.zeros(len(f.parent))
        if advantage != "outcome" and f.records:
            r_all = torch.tensor([r.value * scale for r in f.records])  # the search's value is the reward / scale
            A_node = step_advantages(parent, node_values(parent, torch.tensor([r.node for r in f.records]), r_all))
        for rec in pick:
            per_tok, pos = [], 0
            for n in rec.path:  # the path's nodes, then the rollout's tail under its last node
                k = f.step_len[n]
                per_tok += [float(A_node[n])] * k
                pos += k
            per_tok += [float(A_node[rec.path[-1]])] * (len(rec.ids) - pos)
            token_adv.append(per_tok[: len(rec.ids)])
            rows_ids.append(rec.ids)
            rows_lp.append(rec.logprobs)
            finish.append("stop" if rec.finished else "length")
            texts.append(rec.text)
    B = len(problems)
    rb = rewards(texts, answers=[g for g in golds for _ in range(G)], completion_ids=rows_ids)
    total = torch.tensor(rb.total, dtype=torch.float32).view(B, G)
    outcome = group_advantages(total, adv_scale)  # [B, G]
    T = max(map(len, rows_ids))
    comp = torch.full((B * G, T), tokenizer.pad_token_id, dtype=torch.long)
    old = torch.zeros(B * G, T)
    mask = torch.zeros(B * G, T, dtype=torch.bool)
    tadv = torch.zeros(B * G, T)
    for r, (ids, lp, ta) in enumerate(zip(rows_ids, rows_lp, token_adv)):
        comp[r, : len(ids)], old[r, : len(ids)], mask[r, : len(ids)] = torch.tensor(ids), torch.tensor(lp), True
        o = float(outcome.flatten()[r])
        step_part = torch.tensor(ta) if ta else torch.zeros(0)
        tadv[r, : len(ids)] = o if advantage == "outcome" else (step_part if advantage == "step" else o + weight * step_part)
    ro = Rollout(problems=list(problems), prompts=[list(p) for p in prompts], completions=comp, old_logp=old, mask=mask,
                 finish=finish, texts=texts, rewards=total, per_fn={k: torch.tensor(v, dtype=torch.float32).view(B, G) for k, v in rb.per_fn.items()},
                 advantages=outcome, forward_tokens=sum(f.forward_tokens for f in found), token_advantages=tadv)
    return ro, TreeStats(B, gen, traj)


def merge(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout from several (prompt order: the parts' order); per-token advantages if any part has them.
    On the CPU: a plain part's completions, log-probs and mask are the sampler's, on the model's device, while a tree
    part is built on the CPU (and rewards and advantages are on the CPU in both)."""
    if len(parts) == 1:
        return parts[0]
    T = max(p.completions.shape[1] for p in parts)
    padT = lambda x, v: torch.nn.functional.pad(x.cpu(), (0, T - x.shape[1]), value=v)  # noqa: E731
    tok_adv = None
    if any(p.token_advantages is not None for p in parts):
        tok_adv = torch.cat([padT(p.token_advantages if p.token_advantages is not None
                                  else p.advantages.flatten()[:, None] * p.mask.cpu(), 0.0) for p in parts])
    return Rollout(
        problems=[x for p in parts for x in p.problems], prompts=[x for p in parts for x in p.prompts],
        completions=torch.cat([padT(p.completions, pad_id) for p in parts]), old_logp=torch.cat([padT(p.old_logp, 0.0) for p in parts]),
        mask=torch.cat([padT(p.mask, False) for p in parts]), finish=[x for p in parts for x in p.finish],
        texts=[x for p in parts for x in p.texts], rewards=torch.cat([p.rewards for p in parts]),
        per_fn={k: torch.cat([p.per_fn[k] for p in parts]) for k in parts[0].per_fn},
        advantages=torch.cat([p.advantages for p in parts]), forward_tokens=sum(p.forward_tokens for p in parts),
        token_advantages=tok_adv)


def with_batch_std(ro: Rollout, advantages: torch.Tensor, n_plain: int, tree_advantage: str) -> None:
    """Put `advantages` [B, G] (scaled by the global batch's std: --adv-scale batch) in place of the rollout's own,
    which each part scaled by its own rewards. Tree rows carry their outcome advantage inside the per-token ones
    (all but --tree-advantage step): those move by the same shift. `n_plain`: the plain prompts, which come first."""
    B, G = advantages.shape
    if ro.token_advantages is not None:
        outcome_in_tokens = torch.ones(B * G)  # [B*G] plain rows first, then tree rows
        outcome_in_tokens[n_plain * G :] = float(tree_advantage != "step")
        shift = (advantages - ro.advantages).flatten() * outcome_in_tokens  # [B*G]
        ro.token_advantages = ro.token_advantages + shift[:, None] * ro.mask
    ro.advantages = advantages


def search_config(G: int, max_new_tokens: int, temperature: float, top_p: float, stop: str, sims: int, K: int,
                  c_puct: float, step: str, step_tokens: int, root: str = "puct") -> SearchConfig:
    """Enough simulations for G rollouts (two per needed expansion by default), and rollouts that run to the end."""
    cfg = SearchConfig(n_simulations=max(1, sims), children=K, c_puct=c_puct, root=root, step=step, step_tokens=step_tokens,
                       temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop)
    if sims <= 0:
        cfg = replace(cfg, n_simulations=2 * math.ceil(G / K))
    return replace(cfg, rollout_depth=math.ceil(max_new_tokens / cfg.step_len))
