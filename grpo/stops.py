"""How a command stops part-way, said in one line: out of memory, a full disk (model_io.checkpoint.disk_full),
SIGTERM (raised as Terminated, which ends a command as Ctrl-C does), each with the command that continues it.
run.py's main catches them and prints stop_line's line; the work itself never needs to know.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from grpo import distributed as D
from grpo.checkpointing import checkpoint_dirs

LESS_MEMORY = {  # what holds each command's largest tensors at once
    "train": "lower --micro-batch (completions per forward/backward) or --logprob-chunk, or --prompts-per-step x "
             "--group-size (the completions sampled at once, per process), or tree search's --mcts-simulations x "
             "--mcts-children",
    "eval": "lower --batch-size (questions at once; each with --n answers, or tree search's --children rows and "
            "--n-simulations x --children nodes)",
    "sample": "lower --limit (every question is answered at once)",
}


def out_of_memory(e: RuntimeError) -> str | None:
    """The first words of an out-of-memory error (what was asked for), else None: torch.OutOfMemoryError on a GPU
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ... (a paragraph)"), a
    RuntimeError from the CPU allocator ("[enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't
    allocate memory: you tried to allocate N bytes. Error code 12 ...")."""
    text = " ".join(str(e).split())
    if isinstance(e, torch.OutOfMemoryError):
        return ". ".join(text.split(". ")[:2]).rstrip(".") or "CUDA out of memory"
    cpu = "DefaultCPUAllocator: "
    if cpu in text and "can't allocate memory" in text:
        return text.split(cpu, 1)[1].split(". Error code")[0]
    return None


def how_to_go_on(command: str, args) -> str:
    """What continues a command that stopped part-way (Ctrl-C, SIGTERM, a full disk, out of memory), for the end of
    its one line ('' if nothing does). `args`: the command's parsed flags."""
    if command == "eval" and (Path(args.out_dir) / "predictions.jsonl.partial").is_file():
        return f"`run.py eval --resume --out-dir {args.out_dir}` continues it, keeping the questions answered"
    if command == "train":
        run_dir = Path(args.resume or args.out_dir)
        return (f"`run.py train --resume {run_dir}` continues from its last checkpoint" if checkpoint_dirs(run_dir)
                else "no checkpoint was written yet, so there is nothing to resume (the same command starts it again)")
    return ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, torchrun passing on its own), raised where the command is, so that it
    ends as Ctrl-C does: its files closed, its out-dir let go, one line that says how to continue."""


@contextmanager
def stop_signals():
    """Within: SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt where the command is, once. The first of
    either sets both to be ignored, so that a second Ctrl-C, pressed while the stop closes the command's files and
    lets its out-dir go, cannot cut that short: it did, with a traceback from inside run.py's own cleanup, or the
    process killed by SIGINT at exit. A signal already ignored (SIGINT in a script's background job) stays
    ignored. Off the main thread, where handlers cannot be set: nothing. The handlers from before are put back
    unless a signal came (the process is then on its way out)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in sigs}
    came: list[int] = []

    def stop(signum, frame):
        came.append(signum)
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    for s in sigs:
        if before[s] is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield
    finally:
        if not came:
            for s in sigs:
                signal.signal(s, before[s])


def stdout_reader_gone() -> bool:
    """stdout is a pipe whose reader has closed it (poll reports an error on it), not another broken pipe (a
    socket, a subprocess's) whose traceback says more."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # (captured in-process: no file descriptor)
        return False
    poll = select.poll()
    poll.register(fd, select.POLLERR)
    return any(ev & select.POLLERR for _, ev in poll.poll(0))


def stop_line(e: BaseException, args) -> tuple[str, int, bool] | None:
    """(the line to say, the exit code, whether every rank says it) for a command stopped part-way by `e`, else
    None (an unforeseen failure keeps its traceback). Out of memory is said by the rank that ran out; the rest by
    rank 0 under torchrun, where every rank meets them."""
    rank = D.launch_rank()
    then = how_to_go_on(args.command, args) if rank == 0 else ""
    if isinstance(e, KeyboardInterrupt):
        word, sig = ("terminated", signal.SIGTERM) if isinstance(e, Terminated) else ("interrupted", signal.SIGINT)
        return word + (f": {then}" if then else ""), 128 + int(sig), False
    if isinstance(e, BrokenPipeError) and stdout_reader_gone():  # `run.py inspect-tree ... | head`: the reader has
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # all it wanted; the exit's flush writes nowhere
        return (f"stopped: {then}" if then else ""), 128 + int(signal.SIGPIPE), False  # (the shell's code for it)
    end = f"; {then}" if then else ""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"error: {e.strerror if e.filename is None else f'{e.strerror}: {e.filename}'}{end}", 2, False
    what = out_of_memory(e) if isinstance(e, RuntimeError) else None
    if what is None:
        return None
    return (f"error: out of memory{f' on rank {rank}' if rank else ''} ({what}): "
            f"{LESS_MEMORY.get(args.command, 'use a smaller model')}{end}", 2, True)
