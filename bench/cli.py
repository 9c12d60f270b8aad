"""Checks of the bench scripts' command lines, shared so that a bad flag reads the same one line in each of them
(and as in run.py), before any model loads, instead of a traceback after minutes of loading.

Import it after the repository root is on sys.path (bench/ last: bench/mcts.py must not hide the mcts package).
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager

from data import DataError
from grpo.config import check_ranges
from model_io import ModelSpecError
from run import resolve_device


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


@contextmanager
def user_errors(ap: argparse.ArgumentParser):
    """Around loading the model and GSM8K: a bad --model or --gsm8k is the user's to fix, so one line that says
    how, not a traceback."""
    try:
        yield
    except (ModelSpecError, DataError) as e:
        ap.error(str(e))
