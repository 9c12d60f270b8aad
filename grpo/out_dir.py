"""The output directory of a command (`--out-dir`, or the run a `--resume` names): made and checked writable before
any slow work, taken for one command at a time, refused where it holds another command's outputs or a model,
cleared of an earlier run's files only once the new run's inputs have all been checked, and removed again if the
command fails before writing anything.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # (not on Windows: no lock there)
    fcntl = None

from grpo import distributed as D
from grpo.checkpointing import is_training_config, is_training_run
from model_io.checkpoint import is_checkpoint

TRAIN_OUTPUTS = ("config.json", "metrics.jsonl", "samples.jsonl", "tb", "checkpoints")  # all a run writes before final_hf
EVAL_OUTPUTS = ("predictions.jsonl", "summary.json", "trees.jsonl", "tb", "predictions.jsonl.partial", "trees.jsonl.partial")


MADE_DIRS: list[Path] = []  # --out-dirs this process made: main removes them again if the command fails while they are empty


def make_out_dir(out: Path, flag: str = "--out-dir") -> None:
    """--out-dir (or the flag that names the directory) as a writable directory (made if missing), checked before
    any slow work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file: pass a directory")
    if not out.exists():
        made = [d for d in [out, *out.parents] if not d.exists()]  # deepest first: out, then the parents it needs
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise ValueError(f"{flag} {out} cannot be made ({e.strerror}): pass a writable directory") from None
        MADE_DIRS.extend(made)
    try:  # a directory can exist and still refuse files (permissions, a read-only mount): found now, not at the first write
        tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-").close()
    except OSError as e:
        raise ValueError(f"{flag} {out} is not writable ({e.strerror}): pass a writable directory"
                         + (" (or copy the run somewhere writable and resume it there)" if flag.startswith("--resume") else "")) from None


LOCK_FILE = ".lock"
LOCKS: list[tuple[Path, object]] = []  # (path, open file) of each lock this process holds


def take(out: Path, command: str) -> None:
    """`out` for this command alone: the same command launched twice (another terminal, a scheduler's retry)
    would clear or interleave the first one's files: a train started over in a run stopped before its first
    checkpoint clears its outputs, two evals append to one partial file. An flock on OUT/.lock, which the OS
    releases when the process ends, however it ends (a crash leaves no stale lock); the file is removed when the
    command ends. Under torchrun rank 0 takes it for the group."""
    refuse_misshapen_outputs(out, command)
    if fcntl is None or D.launch_rank() != 0:
        return
    path = out / LOCK_FILE
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held open until release_locks)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            f.seek(0)
            holder = f.read().strip() or "its process id not yet written"
            f.close()
            raise ValueError(f"{out} is in use by another run.py command ({holder}): wait for it to end, or pass another "
                             f"--out-dir") from None
        except OSError:  # a file system without locks (some network and FUSE mounts): go on without one
            f.close()
            path.unlink(missing_ok=True)
            return
        try:  # the file locked must still be the one at `path`: its last holder removes it as it lets go
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}: run.py {command}\n")
    f.flush()
    LOCKS.append((path, f))


# what each command appends to (its logs, its partial answers) and whether it is a file or a directory
APPENDED = {"train": {"metrics.jsonl": True, "samples.jsonl": True, "tb": False},
            "eval": {"predictions.jsonl.partial": True, "trees.jsonl.partial": True}}


def refuse_misshapen_outputs(out: Path, command: str) -> None:
    """A log a command appends to that is a directory (or its TensorBoard directory a file) failed with a traceback,
    after a training step had run (a CLI audit): one line now, before anything loads."""
    for name, is_file in APPENDED.get(command, {}).items():
        path = out / name
        if path.exists() and path.is_file() != is_file:
            raise ValueError(f"{path} is {'a directory' if is_file else 'a file'}, where {command} keeps its "
                             f"{'log' if name != 'tb' else 'TensorBoard events'}: move it away, or pass another --out-dir")


def release_locks() -> None:
    """Remove this process's lock files (while still holding them) and let go."""
    for path, f in LOCKS:
        path.unlink(missing_ok=True)
        f.close()
    LOCKS.clear()


def lets_go(command):
    """A command function that `take`s its out-dir lets it go when it returns or raises (run in-process, as the
    tests do, one after another on one directory)."""
    @functools.wraps(command)
    def run(*a, **k):
        try:
            return command(*a, **k)
        finally:
            release_locks()
    return run


def remove_made_dirs() -> None:
    """The --out-dirs this process made and left empty (a command that failed before writing): gone again."""
    release_locks()
    for out in MADE_DIRS:  # deepest first
        try:
            out.rmdir()  # only an empty directory: whatever was written there stays
        except OSError:
            pass
    MADE_DIRS.clear()


def holds_a_model(out: Path) -> bool:
    """`out` is a model directory (transformers' or ours), whose config.json a command's own would replace."""
    if is_checkpoint(out) or any(out.glob("*.safetensors")) or any(out.glob("*.gguf")):
        return True
    try:
        return "model_type" in json.loads((out / "config.json").read_text())
    except (OSError, ValueError, TypeError, RecursionError):
        return False


def refuse_foreign_out_dir(out: Path, command: str) -> None:
    """An --out-dir holding what another command wrote (or a model) is refused before any slow work: the
    command's config.json would replace theirs, and its outputs would sit beside theirs."""
    run = inside_a_run(out)
    if run is not None:
        raise ValueError(f"--out-dir {out} is inside the training run {run}, whose own files are there (its checkpoints "
                         f"are deleted as it trains on): pass a directory outside its checkpoints/, tb/ and final_hf/ "
                         f"(e.g. {run / command})")
    if holds_a_model(out):
        what = "a model, whose config.json"
    elif command == "eval" and is_training_run(out):
        what = "a training run, whose config.json and tb/"
    elif command == "train" and any((out / f).is_file() for f in ("summary.json", "predictions.jsonl", "predictions.jsonl.partial")):
        what = "an eval's outputs, whose config.json"
    elif command == "eval":
        return refuse_to_replace_an_eval(out)
    elif not is_training_config(out) and any((out / name).exists() for name in TRAIN_OUTPUTS):
        # a run stopped before its first checkpoint is started over there (its outputs cleared): only one that
        # `run.py train` began, whose config.json it wrote first; another program's checkpoints/ are not cleared
        found = ", ".join(name for name in TRAIN_OUTPUTS if (out / name).exists())
        what = f"{found}, not written by `run.py train` (no training config.json beside them), which"
    else:
        return
    raise ValueError(f"--out-dir {out} holds {what} {command} would replace: pass another --out-dir (e.g. {out / command})")


def inside_a_run(out: Path) -> Path | None:
    """The training run whose checkpoints/, tb/ or final_hf/ holds `out` (its rotation deletes checkpoints)."""
    try:
        where = out.resolve()
    except (OSError, RuntimeError):  # (a symlink loop: make_out_dir names it in its line)
        return None
    for parent in (where, *where.parents):
        if parent.name in ("checkpoints", "tb", "final_hf") and is_training_config(parent.parent):
            return parent.parent
    return None


def is_eval_config(saved) -> bool:
    """A parsed config.json that `run.py eval` wrote (EvalConfig's fields)."""
    return isinstance(saved, dict) and {"search", "n", "limit"} <= saved.keys()


def refuse_to_replace_an_eval(out: Path) -> None:
    """eval replaces an earlier eval's outputs in its --out-dir (clear_outputs), but not the answers of one that was
    interrupted (`--resume` continues it: hours of tree search, perhaps), and nothing another program put there:
    a tb/ or config.json beside no eval's config.json."""
    partial = out / "predictions.jsonl.partial"
    n = len(partial.read_text(encoding="utf-8", errors="replace").splitlines()) if partial.is_file() else 0
    if n:
        raise ValueError(f"--out-dir {out} holds an interrupted eval ({n} question(s) answered): continue it with "
                         f"`run.py eval --resume --out-dir {out}`, or pass another --out-dir (or remove its "
                         f"{partial.name} to start it over)")
    found = [name for name in ("config.json", *EVAL_OUTPUTS) if (out / name).exists()]
    if not found:
        return
    try:
        if is_eval_config(json.loads((out / "config.json").read_text())):
            return
    except (OSError, ValueError, RecursionError):
        pass
    raise ValueError(f"--out-dir {out} holds {', '.join(found)}, not written by an eval (no eval's config.json beside "
                     f"them), which eval would replace: pass another --out-dir (e.g. {out / 'eval'})")


def clear_outputs(out: Path, outputs: tuple[str, ...]) -> None:
    """Remove what an earlier run of the command left in `out` (once this run's inputs have loaded), so that no
    old file sits beside the new ones and is taken for theirs."""
    for name in outputs:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
