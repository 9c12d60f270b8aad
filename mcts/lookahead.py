"""Lookahead decoding: decode plainly, and at decision points let a small tree search choose the next step.

  --mcts-when always      every step is chosen by search (a search per reasoning step)
  --mcts-when every:K     K tokens of plain decoding, then one searched step, and again
  --mcts-when entropy:H   plain decoding until the next token's entropy exceeds H nats, then one searched step
  --fallback-p P          at a decision point, decode the step plainly instead with probability P

At a decision point the search starts from the answer so far and commits its root's most visited child
(ties: higher value, then lower index), or with `root="gumbel"` the child Sequential Halving chose. Every row
keeps its own token budget: rows decoded or searched together never cut each other short. `mcts_rollout` is
the seed plan's one-step interface on top of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from data import StopOnText, stop_token_ids
from model_io import SamplingConfig, Transformer, generate
from model_io.row_keys import RowKeys
from model_io.sampler import key_uniform

from .interface import SearchConfig, self_consistency_value
from .search import newline_table, parse_answer, search, step_ends


@dataclass(frozen=True)
class When:
    mode: str  # "always" | "every" | "entropy"
    k: int = 0
    h: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "When":
        try:
            if spec == "always":
                return cls("always")
            if spec.startswith("every:") and int(spec[6:]) > 0:
                return cls("every", k=int(spec[6:]))
            if spec.startswith("entropy:") and 0 < float(spec[8:]) < math.inf:  # (inf: no token's entropy passes it)
                return cls("entropy", h=float(spec[8:]))
        except ValueError:
            pass
        raise ValueError(f"bad --mcts-when {spec!r}: use tree (the default: one search builds each answer), always, "
                         "every:K (K >= 1) or entropy:H (H > 0 and finite, nats)")


@dataclass
class LookaheadResult:
    text: str
    answer: str | None
    tokens: list[int]  # the committed answer
    finish: str
    generated_tokens: int  # plain tokens + every token sampled by the searches
    forward_tokens: int
    searches: int  # decision points that ran a search


def _coin(seed: int, qid: int, decision: int) -> float:
    return key_uniform(f"fallback/{seed}/{qid}/{decision}")


@torch.no_grad()
def lookahead_decode(model: Transformer, tokenizer, prompts: Sequence[Sequence[int]], cfg: SearchConfig, when: When,
                     fallback_p: float = 0.0, question_ids: Sequence[int] | None = None, seed: int = 0,
                     value_fn=None) -> list[LookaheadResult]:
    B = len(prompts)
    qids = list(question_ids) if question_ids is not None else list(range(B))
    eos = stop_token_ids(tokenizer, model.cfg.eos_token_ids)
    stop = StopOnText(tokenizer, [cfg.stop]) if cfg.stop else None
    nl = newline_table(tokenizer) if cfg.step == "newline" else None
    committed: list[list[int]] = [[] for _ in range(B)]
    finish = ["length"] * B
    gen, fwd, searches, decisions = [0] * B, [0] * B, [0] * B, [0] * B

    def ended(ids: list[int]) -> str:
        """How an answer so far stands: "eos" or "stop" once it is complete, else "length" (still open)."""
        if ids and ids[-1] in eos:
            return "eos"
        if cfg.stop and cfg.stop in tokenizer.decode(ids[-(len(cfg.stop) + 8):], skip_special_tokens=False):
            return "stop"
        return "length"

    def room(r: int) -> int:
        return cfg.max_new_tokens - len(committed[r])

    def plain(rows: list[int], caps: list[int], kind: str, **kw) -> tuple[list[list[int]], list[str]]:
        """Plain sampling for `rows`, row i at most caps[i] tokens (a row reaching its cap ends with finish
        "length"). Returns the tokens sampled per row (all of them paid for) and finish reasons. Each row draws from its own
        key (question, decision, position in the answer), as the search's rows do: a row's answer does not
        depend on which other questions share its batch (--batch-size)."""
        keys = RowKeys.from_names([f"lookahead/{kind}/{seed}/{qids[r]}/{decisions[r]}/{len(committed[r])}" for r in rows],
                                  model.device)
        res = generate(model, [list(prompts[r]) + committed[r] for r in rows],
                       SamplingConfig(max_new_tokens=max(caps), temperature=cfg.temperature, top_p=cfg.top_p, eos_ids=eos, **kw),
                       keys, stop=stop, pad_id=tokenizer.pad_token_id, max_tokens=torch.tensor(caps),
                       stop_context=[committed[r] for r in rows])  # (a stretch may have ended inside the stop string)
        return [res.row(i) for i in range(len(rows))], list(res.finish)

    stuck: set[int] = set()  # rows whose search could expand nothing (no room): their answer is as long as it gets
    while True:
        rows = [r for r in range(B) if finish[r] == "length" and len(committed[r]) < cfg.max_new_tokens and r not in stuck]
        if not rows:
            break
        if when.mode != "always":  # the plain stretch: every:K decodes K tokens, entropy:H until a row is unsure
            kw = {"max_entropy": when.h} if when.mode == "entropy" else {}
            n = when.k if when.mode == "every" else cfg.max_new_tokens
            toks, fin = plain(rows, [min(n, room(r)) for r in rows], "plain", **kw)
            for i, r in enumerate(rows):
                fwd[r] += len(prompts[r]) + len(committed[r]) + len(toks[i])  # the prefill, then every sampled token
                committed[r] += toks[i]
                gen[r] += len(toks[i])
                if fin[i] in ("eos", "stop"):
                    finish[r] = fin[i]
            # entropy:H: only a row that stopped unsure has reached a decision point (a row that ran out of
            # room is done; every:K rows have had their K tokens)
            rows = [r for i, r in enumerate(rows) if finish[r] == "length" and room(r) > 0
                    and (when.mode != "entropy" or fin[i] == "unsure")]
            if not rows:
                continue
        # the decision point: a searched step, or (with probability fallback_p) a plain one
        coin = {r: _coin(seed, qids[r], decisions[r]) for r in rows}
        for r in rows:
            decisions[r] += 1
        fall = [r for r in rows if coin[r] < fallback_p]
        srch = [r for r in rows if coin[r] >= fallback_p]
        if fall:
            toks, _ = plain(fall, [min(cfg.step_len, room(r)) for r in fall], "fallback")
            lengths = torch.tensor([len(t) for t in toks])
            padded = torch.tensor([t + [0] * (int(lengths.max()) - len(t)) for t in toks]).view(len(toks), -1)
            ends = step_ends(padded, lengths, cfg, nl)
            for i, r in enumerate(fall):
                fwd[r] += len(prompts[r]) + len(committed[r]) + len(toks[i])
                committed[r] += toks[i][: int(ends[i])]
                gen[r] += len(toks[i])
                finish[r] = ended(committed[r])
        if srch:
            caps = [room(r) for r in srch]
            # the value function scores, and answers are parsed from, the whole answer: what is committed, then the search's
            found = search(model, tokenizer, [list(prompts[r]) + committed[r] for r in srch], replace(cfg, max_new_tokens=max(caps)),
                           [qids[r] * 100003 + decisions[r] for r in srch], seed, value_fn, max_new_tokens=caps,
                           answer_prefix=[committed[r] for r in srch])
            for r, f in zip(srch, found):
                searches[r] += 1
                gen[r] += f.generated_tokens
                fwd[r] += f.forward_tokens
                if not f.first_steps:
                    stuck.add(r)
                    continue
                committed[r] += f.best_first_step()["tokens"]
                finish[r] = ended(committed[r])
    out = []
    for r in range(B):
        text = tokenizer.decode(committed[r], skip_special_tokens=True)
        out.append(LookaheadResult(text, parse_answer(text), committed[r], finish[r], gen[r], fwd[r], searches[r]))
    return out


def mcts_rollout(prompt: str, model: Transformer, tokenizer, n_simulations: int = 3, rollout_depth: int = 3,
                 reward_func: Callable[[list[str]], list[float]] | None = None, **search_kw) -> tuple[str, list[float]]:
    """The seed plan's one-step lookahead: from `prompt` (text, the chat template already applied and any answer
    so far appended), search `n_simulations` x K continuations and return the best next step's text and the
    values of the candidate next steps (the root's children, in order). `reward_func(texts) -> values`, if given,
    scores whole continuations (prompt excluded) instead of the default gold-free value."""
    cfg = SearchConfig(n_simulations=n_simulations, rollout_depth=rollout_depth, **search_kw)
    value_fn = None
    if reward_func is not None:
        value_fn = lambda c: [float(v) for v in reward_func(c.texts)]  # noqa: E731
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    found = search(model, tokenizer, [ids], cfg, value_fn=value_fn or self_consistency_value(cfg.format_weight))[0]
    if not found.first_steps:
        return "", []
    return found.best_first_step()["text"], [s["value"] for s in found.first_steps]
