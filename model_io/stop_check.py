"""How the sampler asks whether a row is finished by a stop string: it hands each live row's newest generated tokens
(token ids, as plain lists) to a StopFn, which data/ implements over text ("</answer>"): model_io knows token ids,
data/ knows text.

A stop string may begin before a decode call: a tree node's path ending in "</", an answer committed by lookahead
and cut mid-string by a plain stretch. decode's `stop_context` (each row's tokens so far) lends the check the
tokens before the call, so that the token completing the string ends the row.
"""
from __future__ import annotations

from typing import Protocol, Sequence


class StopFn(Protocol):
    """Says which live rows are finished, from the newest `window` generated tokens of each (as plain lists, so
    that text-level stops such as "</answer>" can live in data/, which knows text and not tensors)."""

    window: int

    def __call__(self, tails: list[list[int]]) -> list[bool]: ...


def stop_heads(stop: StopFn | None, context: Sequence[Sequence[int]] | None, R: int) -> list[list[int]] | None:
    """decode's `stop_context` as the stop check reads it: each row's last window - 1 tokens before this call, so
    that a stop string begun before the call (a tree node's path ending in "</", a committed answer cut
    mid-string by a plain stretch) ends the row on the token that completes it; without them the call never saw
    the string whole, and the row ran on past its answer. A row whose context already holds a whole stop string
    gets none: every match must be completed by the call's own tokens (one completed before is its caller's)."""
    if stop is None or context is None:
        return None
    if len(context) != R:
        raise ValueError(f"stop_context has {len(context)} rows, the batch {R}")
    heads = [list(c[max(0, len(c) - (stop.window - 1)) :]) for c in context]
    held = stop(heads) if any(heads) else [False] * R
    return [[] if h else head for head, h in zip(heads, held)]


def with_heads(tails: list[list[int]], rows: Sequence[int], heads: list[list[int]] | None, window: int) -> list[list[int]]:
    """Stop-check tails [r] of fewer than `window` generated tokens, led by their row's context (stop_heads)."""
    if heads is None:
        return tails
    return [heads[r][max(0, len(heads[r]) - (window - len(t))) :] + t if len(t) < window else t for r, t in zip(rows, tails)]
