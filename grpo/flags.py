"""The command line's flags: one per field of a command's config dataclass (typed from its annotation, help and
default from the field), which flags the user gave, one-line usage errors and notes. run.py builds its commands from
these; the configs themselves (and their range checks) live beside what they configure.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing

from grpo.config import flag_name
from grpo.evaluate import EvalConfig


def _field_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307 (our own annotations)
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per field of dataclass `cls`, typed from its annotation, help from its metadata."""
    for f in dataclasses.fields(cls):
        t = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + (" (default: '')" if f.default == "" else " (default: %(default)s)")
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=t, metavar=f.name.upper(), help=f.metadata.get("help", ""))
        elif t is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=t, default=f.default, metavar=t.__name__.upper(), help=help_)


def given_fields(argv: list[str], cls) -> set[str]:
    """Names of the fields the user set on the command line (--x-y and --no-x-y both set x_y), which a preset
    must leave alone."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = set()
    for a in argv:
        if a.startswith("--"):
            n = a[2:].split("=")[0].replace("-", "_")
            given.add(n[3:] if n.startswith("no_") and n[3:] in names else n)
    return given & names


PATH_FIELDS = ("out_dir", "resume", "gsm8k", "file")  # (--model is expanded where model specs are read)


def config_from_args(cls, args: argparse.Namespace):
    """The config the flags give; a path's '~' expanded here, where the shell leaves it (`--out-dir=~/runs/x`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for name in PATH_FIELDS:
        if isinstance(values.get(name), str):
            if name != "file" and not values[name].strip():
                raise ValueError(f"--{name.replace('_', '-')} is empty: give a path, or leave the flag out for its default")
            values[name] = os.path.expanduser(values[name])
    return cls(**values)


def note(*lines: str | None) -> None:
    """One-line notes for the user on stderr (nothing for None)."""
    for line in lines:
        if line:
            print(line, file=sys.stderr)


# Flags that only some settings read, and when they are read. Given where they are not, each is named in a note
# (not an error: a script may pass one set of flags to every --search; config.json records them as given). EvalConfig
# still refuses a value set where it would read as if it applied: --n with greedy or mcts (one answer), --top-k with
# mcts, --fallback-p with a whole-tree search.
_MCTS = lambda c: c.search == "mcts"  # noqa: E731
_SAMPLES = lambda c: c.search in ("sample", "majority", "best-of-n")  # noqa: E731
EVAL_FLAG_USED = {
    "temperature": lambda c: c.search != "greedy", "top_p": lambda c: c.search != "greedy", "top_k": _SAMPLES,
    **dict.fromkeys(("n_simulations", "children", "c_puct", "mcts_root", "step", "step_tokens", "rollout_depth",
                     "mcts_rescore", "mcts_when"), _MCTS),
    # lookahead decoding commits each decision's most visited first step: no answer is chosen among the tree's
    "mcts_answer": lambda c: c.search == "mcts" and c.mcts_when == "tree",
    "fallback_p": lambda c: c.search == "mcts" and c.mcts_when != "tree",
    "format_weight": lambda c: c.search in ("mcts", "best-of-n"),
}
TRAIN_FLAG_USED = {
    **dict.fromkeys(("mcts_prob", "tree_advantage", "mcts_simulations", "mcts_children", "mcts_c_puct", "mcts_root",
                     "mcts_step", "mcts_step_tokens"), lambda c: c.rollouts == "mcts"),
    "tree_advantage_weight": lambda c: c.rollouts == "mcts" and c.tree_advantage == "mix",
}


def unused_flags_note(cfg, given: set[str]) -> str | None:
    """A note naming the given flags that these settings do not read."""
    lookahead = isinstance(cfg, EvalConfig) and cfg.search == "mcts" and cfg.mcts_when != "tree"
    used, context = ((EVAL_FLAG_USED, f"--search {cfg.search}" + (f", --mcts-when {cfg.mcts_when}" if lookahead else ""))
                     if isinstance(cfg, EvalConfig) else
                     (TRAIN_FLAG_USED, f"--rollouts {cfg.rollouts}" + (f", --tree-advantage {cfg.tree_advantage}"
                                                                        if cfg.rollouts == "mcts" else "")))
    unused = [flag_name(k) for k in sorted(given) if k in used and not used[k](cfg)]
    if not unused:
        return None
    return f"note: {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with {context}"


def more_than_asked(limit: int, n: int, split: str) -> str | None:
    """A note when --limit asks for more questions than the split has to answer."""
    if limit > n:
        return f"note: --limit {limit}, but the {split} split has {n} question{'s' * (n != 1)} to answer: answering all {n}"
    return None


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the flag and pointing at --help (argparse prints the whole usage block
    first: 13 lines for eval, more for train, above the one that matters)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
