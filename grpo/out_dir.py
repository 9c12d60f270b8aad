"""The output directory of a command (`--out-dir`, or the run a `--resume` names): made and checked writable before
any slow work, refused where it holds another command's outputs or a model, cleared of an earlier run's files only
once the new run's inputs have all been checked, and removed again if the command fails before writing anything.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from grpo.checkpointing import is_training_run
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


def remove_made_dirs() -> None:
    """The --out-dirs this process made and left empty (a command that failed before writing): gone again."""
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
    except (OSError, ValueError, TypeError):
        return False


def refuse_foreign_out_dir(out: Path, command: str) -> None:
    """An --out-dir holding what another command wrote (or a model) is refused before any slow work: the
    command's config.json would replace theirs, and its outputs would sit beside theirs."""
    if holds_a_model(out):
        what = "a model, whose config.json"
    elif command == "eval" and is_training_run(out):
        what = "a training run, whose config.json and tb/"
    elif command == "train" and any((out / f).is_file() for f in ("summary.json", "predictions.jsonl", "predictions.jsonl.partial")):
        what = "an eval's outputs, whose config.json"
    else:
        return
    raise ValueError(f"--out-dir {out} holds {what} {command} would replace: pass another --out-dir (e.g. {out / command})")


def clear_outputs(out: Path, outputs: tuple[str, ...]) -> None:
    """Remove what an earlier run of the command left in `out` (once this run's inputs have loaded), so that no
    old file sits beside the new ones and is taken for theirs."""
    for name in outputs:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
