"""The five reward functions of the well-known GRPO GSM8K recipe, and a RewardSet that weights and reports them.

Each is `fn(completions: list[str], **kw) -> list[float]`, with the gold answers passed as `answers=`. No input
string makes any of them raise: they only search, count and compare strings. Two departures from the recipe's
code, each because as written a reward could not reach what it pays for:
- All regexes use DOTALL: the recipe's strict pattern without it could never match a multi-line reasoning. The
  strict pattern keeps the rest of what the recipe's matched: one reasoning block, an answer on one line, nothing
  after the layout (with DOTALL alone it also took a repeated reasoning block, a multi-line answer, a second newline).
- A text may end right at its closing `</answer>`, where the recipe's layout ends with a newline after it. The
  sampler stops a completion at `</answer>` (`--stop`, the default) and SmolLM2's vocabulary has no `>\n` token,
  so no stopped completion has that newline: the strict format paid 0.5 to none of them, and xmlcount charged
  every one 0.001 per character of its whole text (its "text after the closing tag" split found no tag and kept
  everything). Both now read the end of the text as the end of the tag's line, as `--stop ''` would have let the
  model write it; text after the tag is charged as before.
Three more, in what counts as an answer (data/answers.py), so that the rewards agree with `eval`'s strict accuracy:
- correctness compares numbers after normalisation ("$1,000.00" equals the gold "1000"), where the recipe compares
  the extracted string with the gold string exactly;
- the integer reward accepts a sign ("-3" earns 0.5), where the recipe's `str.isdigit()` paid 0 for a negative;
- the answer is the content of the last closed <answer>...</answer> pair, where the recipe's split also read an
  unclosed tag's text to the end (a completion cut off by the token limit inside its answer was paid as finished).
  A pair opens at the first <answer> after the previous pair: "<answer>\n<answer>\n7\n</answer>" holds the
  second tag, no number, where the recipe's split read 7 after the last opening tag.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from data.answers import answer_content, normalize_number, parse_strict

RewardFn = Callable[..., list[float]]

# reasoning over any lines, but one block of it (no reasoning tag inside); the answer on one line, as the recipe's
# pattern without DOTALL had it; nothing after the last newline (\Z: `$` also matched before a second one)
STRICT_FORMAT = re.compile(r"^<reasoning>\n(?:(?!</?reasoning>).)*?\n</reasoning>\n<answer>\n(?:(?!</?answer>)[^\n])*\n</answer>\n?\Z",
                           re.DOTALL)
SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
INTEGER = re.compile(r"[+-]?\d+")


def correctness_reward_func(completions: Sequence[str], answers: Sequence[str], **_) -> list[float]:
    """2.0 when the strict-parsed answer equals the gold number after normalisation."""
    if len(answers) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    return [2.0 if (p := parse_strict(c)) is not None and p == normalize_number(a) else 0.0 for c, a in zip(completions, answers)]


def int_reward_func(completions: Sequence[str], **_) -> list[float]:
    """0.5 when the strict-parsed answer is an integer literal (digits with an optional sign)."""
    return [0.5 if (a := answer_content(c)) is not None and INTEGER.fullmatch(a) else 0.0 for c in completions]


def strict_format_reward_func(completions: Sequence[str], **_) -> list[float]:
    """0.5 when the whole text is exactly the reasoning/answer layout, newlines included (the last one optional)."""
    return [0.5 if STRICT_FORMAT.match(c) else 0.0 for c in completions]


def soft_format_reward_func(completions: Sequence[str], **_) -> list[float]:
    """0.5 when the text starts with a reasoning block followed by an answer block."""
    return [0.5 if SOFT_FORMAT.match(c) else 0.0 for c in completions]


def count_xml(text: str) -> float:
    """0.125 per tag written exactly once with its newlines; text after the closing answer tag's line costs 0.001 a
    char (charged twice, as in the recipe: once with the opening tag, once with the closing one)."""
    score = 0.0
    # after the last closing tag and its newline, if any (the recipe split at "\n</answer>\n", which a text ending
    # at the tag lacks: it then charged the whole text); "" for a text ending at the tag or just after its newline
    after = text.split("\n</answer>")[-1].removeprefix("\n") if "\n</answer>" in text else text
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(after) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= len(after) * 0.001
    return score


def xmlcount_reward_func(completions: Sequence[str], **_) -> list[float]:
    return [count_xml(c) for c in completions]


DEFAULT_REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward_func,
    "int": int_reward_func,
    "strict_format": strict_format_reward_func,
    "soft_format": soft_format_reward_func,
    "xmlcount": xmlcount_reward_func,
}


@dataclass
class RewardBreakdown:
    total: list[float]  # [R] weighted sum
    per_fn: dict[str, list[float]]  # name -> [R] unweighted values


class RewardSet:
    """Weighted reward functions, applied together; each one's values are kept for logging."""

    def __init__(self, weights: dict[str, float] | None = None, fns: dict[str, RewardFn] | None = None):
        self.fns = dict(fns or DEFAULT_REWARDS)
        weights = {name: 1.0 for name in self.fns} if weights is None else dict(weights)
        unknown = set(weights) - set(self.fns)
        if unknown:
            raise ValueError(f"unknown reward functions {sorted(unknown)}: known are {', '.join(self.fns)}")
        self.weights = weights

    @classmethod
    def parse(cls, spec: str) -> "RewardSet":
        """'correctness=1,xmlcount=0.5' -> RewardSet of those two alone; an empty spec means all five at weight 1."""
        if not spec.strip():
            return cls()
        weights = {}
        for part in filter(str.strip, spec.split(",")):  # (a trailing comma names no reward)
            name, _, w = part.partition("=")
            if name.strip() in weights:  # which weight would count?
                raise ValueError(f"--rewards {spec!r}: reward {name.strip()!r} given twice: give each reward once")
            try:
                weights[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"--rewards {spec!r}: bad reward weight {part!r}: write name=weight, e.g. correctness=1,xmlcount=0.5") from None
            if not math.isfinite(weights[name.strip()]):  # nan or inf: every reward, advantage and update would be nan
                raise ValueError(f"--rewards {spec!r}: bad reward weight {part!r}: a weight must be a finite number, e.g. correctness=1,xmlcount=0.5")
        if not any(weights.values()):  # every reward 0: no advantage, nothing to learn
            raise ValueError(f"--rewards {spec!r} weighs every reward 0: give at least one a nonzero weight")
        try:
            return cls(weights)
        except ValueError as e:  # (an unknown name: the constructor's line, with the flag that gave it)
            raise ValueError(f"--rewards {spec!r}: {e}") from None

    def __call__(self, completions: Sequence[str], answers: Sequence[str], **kw) -> RewardBreakdown:
        """kw (e.g. completion_ids) is passed on to every function; the five GSM8K ones ignore it."""
        per_fn = {name: self.fns[name](completions, answers=answers, **kw) for name in self.weights}
        total = [sum(self.weights[n] * per_fn[n][i] for n in per_fn) for i in range(len(completions))]
        return RewardBreakdown(total, per_fn)
