"""What a tree search is told and what it gives back: its config, one record per rollout, one result per question,
and what a value function sees (mcts/search.py runs the search itself)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from grpo.rewards import soft_format_reward_func

ANSWER_MODES = ("vote", "value", "visits")
ROOT_RULES = ("puct", "gumbel")


def check_step(step: str, flag: str = "--step") -> None:
    """A tree node's extent: "newline" or "tokens:N" with N >= 1."""
    if not (step == "newline" or (step.startswith("tokens:") and step[7:].isascii() and step[7:].isdigit() and int(step[7:]) > 0)):
        raise ValueError(f"unknown {flag} {step!r}: use newline or tokens:N (N >= 1)")


@dataclass
class SearchConfig:
    n_simulations: int = 8  # simulations per question
    children: int = 4  # K: continuations sampled per expansion
    c_puct: float = 1.0
    root: str = "puct"  # root selection: puct, or gumbel (Gumbel scores + Sequential Halving, mcts/gumbel.py)
    gumbel_c_visit: float = 50.0  # sigma(q) = (c_visit + max n) * c_scale * q (Danihelka et al. 2022, eq. 8)
    gumbel_c_scale: float = 1.0
    step: str = "newline"  # "newline" or "tokens:N"
    step_tokens: int = 48  # cap on a newline step
    rollout_depth: int = 4  # a new node's step and its rollout: (1 + rollout_depth) * step_tokens tokens at most
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256  # cap on a whole answer (path + rollout)
    answer: str = "vote"  # final answer: vote (value-weighted over finished rollouts) | value (best) | visits (path);
    # vote and value rescore every finished rollout against the whole tree's answers first (pick_finished)
    format_weight: float = 0.3  # value = w * format + (1 - w) * agreement
    # before each simulation's selection, score every finished rollout again against its tree's answers so far and
    # rebuild the tree's values from those scores (mcts/tree.py revalue): without it, a rollout keeps the agreement
    # it had when created, against the answers found up to then (the first K against a pool of K)
    rescore: bool = False
    stop: str = "</answer>"

    def __post_init__(self):
        if self.answer not in ANSWER_MODES:
            raise ValueError(f"unknown --mcts-answer {self.answer!r}: use one of {', '.join(ANSWER_MODES)}")
        if self.root not in ROOT_RULES:
            raise ValueError(f"unknown --mcts-root {self.root!r}: use one of {', '.join(ROOT_RULES)}")
        check_step(self.step)
        if self.n_simulations < 1 or self.children < 1 or self.rollout_depth < 0 or self.step_tokens < 1:
            raise ValueError("n_simulations, children and step_tokens must be >= 1, rollout_depth >= 0")
        if not 0 <= self.temperature < math.inf or not 0 < self.top_p <= 1:  # (NaN: 1-token answers, silently)
            raise ValueError(f"temperature must be finite and >= 0 (got {self.temperature}) and top_p in (0, 1] "
                             f"(got {self.top_p})")
        if not 0 <= self.c_puct < math.inf or not 0 <= self.format_weight <= 1:
            raise ValueError(f"c_puct must be finite and >= 0 (got {self.c_puct}) and format_weight in [0, 1] (got {self.format_weight})")
        if not (0 <= self.gumbel_c_visit < math.inf and 0 <= self.gumbel_c_scale < math.inf):  # a negative scale turns
            # sigma(q) around: the root would prefer its worst-valued children
            raise ValueError(f"gumbel_c_visit and gumbel_c_scale must be finite and >= 0 (got {self.gumbel_c_visit}, "
                             f"{self.gumbel_c_scale})")

    @property
    def step_len(self) -> int:
        return int(self.step[7:]) if self.step.startswith("tokens:") else self.step_tokens


@dataclass
class RolloutRecord:
    node: int  # the child its first step became
    text: str  # the whole answer: search's answer_prefix (if any) + path + continuation
    answer: str | None  # parsed (strict, else lenient)
    value: float
    finished: bool  # ended by EOS or the stop string (not cut by a token limit)
    tokens: int  # answer length in tokens
    ids: list[int] = field(default_factory=list)  # the token ids this search added: path + continuation
    logprobs: list[float] = field(default_factory=list)  # their log-probs under the sampling policy (temperature 1)
    path: list[int] = field(default_factory=list)  # node ids from the root's child down to `node`


@dataclass
class SearchResult:
    """One question's search. `records`, `step_len` and `parent` are kept for training on the tree (issue 6)."""

    text: str  # the chosen answer
    answer: str | None
    answer_tokens: int  # its length in tokens
    finish: str  # "eos" | "stop" (finished) or "length" (cut by a token limit)
    generated_tokens: int  # all tokens sampled for this question (every child's continuation)
    forward_tokens: int  # tokens through the model for it: prompt once + paths + continuations (grpo/evaluate.py's rule)
    nodes: int
    tree: dict = field(default_factory=dict)  # node texts and statistics, for dumps
    first_steps: list[dict] = field(default_factory=list)  # root's children: tokens, text, visits, value, prior
    records: list[RolloutRecord] = field(default_factory=list)  # every rollout, in creation order
    step_len: list[int] = field(default_factory=list)  # [nodes] tokens of each node's own step
    parent: list[int] = field(default_factory=list)  # [nodes] parent of each node (-1 for the root)
    root_choice: int | None = None  # with root="gumbel": the root child Sequential Halving chose (its node id)

    def best_first_step(self) -> dict | None:
        """The root child to commit to: Gumbel's final choice if it made one, else the most visited child
        (ties: higher value, then lower node id)."""
        if self.root_choice is not None:
            chosen = [s for s in self.first_steps if s["node"] == self.root_choice]
            if chosen:
                return chosen[0]
        return max(self.first_steps, key=lambda s: (s["visits"], s["value"], -s["node"])) if self.first_steps else None


@dataclass
class Candidates:
    """What a value function sees: whole answers (answer prefix + path + continuation), one per new child."""

    texts: list[str]
    answers: list[str | None]  # parsed, None where unfinished or unparsable
    finished: list[bool]
    pools: list[list[str]]  # answers found so far in each row's tree (this simulation included)
    trees: list[int]  # index of each row's tree among the B searched (e.g. to find its gold answer in training)
    ids: list[list[int]]  # token ids of each answer


ValueFn = Callable[[Candidates], list[float]]


def self_consistency_value(format_weight: float) -> ValueFn:
    def value(c: Candidates) -> list[float]:
        out = []
        for t, a, pool in zip(c.texts, c.answers, c.pools):
            fmt = soft_format_reward_func([t])[0] / 0.5
            agree = (sum(p == a for p in pool) / len(pool)) if a is not None and pool else 0.0
            out.append(format_weight * fmt + (1 - format_weight) * agree)
        return out

    return value


def pick_finished(records: list[RolloutRecord], values: list[float], mode: str) -> RolloutRecord | None:
    """The final answer among finished rollouts [R] with answers, by `values` [R] (the value function applied once
    more when the search is done, every rollout against the same pool: all the tree's finished answers).
    vote: the answer with the largest summed value (ties: the one found first), then its best-valued rollout;
    value: the best-valued rollout (ties: the first). A rollout's own `value` is kept as the search saw it:
    scored against the answers found up to its simulation, the first ones against a pool of K (its siblings) and
    the last against all. Voting with those weighted the answers by when they were found, and within the winning
    answer preferred the rollout that agreed by chance early over the one in the better format; with the whole
    pool, `value` is best-of-n's choice over the tree's rollouts, and vote favours well-formatted rollouts of the
    most frequent answers."""
    assert len(records) == len(values), f"{len(records)} rollouts, {len(values)} values"
    if not records:
        return None
    if mode == "value":
        return records[max(range(len(records)), key=lambda i: (values[i], -i))]
    assert mode == "vote", f"pick_finished chooses by vote or value, not {mode!r}"
    score: dict[str, float] = {}
    for r, v in zip(records, values):
        score[r.answer] = score.get(r.answer, 0.0) + v  # insertion order: the order answers were found
    best = max(score, key=lambda a: score[a])  # max keeps the first of equal scores
    return records[max((i for i, r in enumerate(records) if r.answer == best), key=lambda i: (values[i], -i))]
