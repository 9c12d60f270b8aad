"""Checks of the bench scripts' command lines, shared so that a bad flag reads the same one line in each of them
(and as in run.py), before any model loads, instead of a traceback after minutes of loading.

Import it after the repository root is on sys.path (bench/ last: bench/mcts.py must not hide the mcts package).
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

from data import DataError
from grpo.config import check_ranges
from grpo.flags import OneLineParser
from grpo.stops import out_of_memory as oom_words
from model_io import ModelSpecError
from run import check_context, resolve_device


def parser(doc: str) -> argparse.ArgumentParser:
    """A bench script's parser: its docstring as the description, and a usage error in one line (run.py's
    OneLineParser), not argparse's usage block above it."""
    return OneLineParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M-Instruct)")


def add_gsm8k(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gsm8k", default=None, type=a_path, help="GSM8K file or directory (default: $GSM8K_DIR, else the hub)")


def a_path(text: str) -> str:
    """A path flag's value, as run.py takes it: an empty one is refused (it read the working directory), '~' expanded."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path, or leave the flag out for its default")
    return os.path.expanduser(text)


def add_device(ap: argparse.ArgumentParser, what: str = "") -> None:
    """--device, checked after parsing by check_device; `what` says whose device it is, where that needs saying."""
    import torch

    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help=f"{what + ' ' if what else ''}(default: cuda if available, else cpu)")


def check_args(ap: argparse.ArgumentParser, a: argparse.Namespace, at_least_1=(), at_least_0=(), in_0_1=()) -> None:
    """Range checks of parsed flags by their attribute names, one line naming the flag (run.py's own checks)."""
    try:
        check_ranges(a, at_least_1=at_least_1, at_least_0=at_least_0, in_0_1=in_0_1)
    except ValueError as e:
        ap.error(str(e))


def check_device(ap: argparse.ArgumentParser, name: str) -> str:
    """--device as run.py takes it (cpu, cuda, cuda:N, auto): unknown names and CUDA on a machine without it are
    refused in one line; -> the device's name, 'auto' resolved."""
    try:
        return str(resolve_device(name))
    except ValueError as e:
        ap.error(str(e))


def check_fits(ap: argparse.ArgumentParser, model, tok, questions: list[str], shots, max_new_tokens: int,
               shots_flag: bool = True) -> None:
    """The prompts plus --max-new-tokens within the model's context, refused in one line as eval refuses them
    (run.check_context): past it the KV cache is sized for them (a traceback after loading) and RoPE runs on positions
    the model never saw."""
    try:
        check_context(model, tok, questions, shots, max_new_tokens, shots_flag)
    except ValueError as e:
        ap.error(str(e))


@contextmanager
def out_of_memory(ap: argparse.ArgumentParser, flags: str):
    """Within: running out of memory (a GPU's, or a CPU allocation that fails) is one line naming the flags that
    use less, as in run.py (grpo/stops.py), not a traceback."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        said = oom_words(e) if isinstance(e, RuntimeError) else None
        if said is None:
            raise
        ap.error(f"out of memory ({said}): lower {flags}")


@contextmanager
def user_errors(ap: argparse.ArgumentParser):
    """Around loading the model and GSM8K: a bad --model or --gsm8k is the user's to fix, so one line that says
    how, not a traceback."""
    try:
        yield
    except (ModelSpecError, DataError) as e:
        ap.error(str(e))
