"""Training checkpoints: model + optimizer + scheduler + RNG states + step, written atomically, the newest K kept.

Layout: RUN_DIR/checkpoints/step-000050/{model/ (a model spec: config, safetensors, tokenizer), trainer_state.pt,
train_config.json}.
A checkpoint is written into a temporary directory and renamed into place, so a crash mid-write leaves the
previous checkpoints intact and no half-written one. trainer_state.pt holds only tensors, numbers and
containers, and is read with torch.load(weights_only=True): nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import torch

from model_io import ModelSpecError, load_model, save_model
from model_io.checkpoint import atomic_dir

from .config import RESUME_MAY_CHANGE, TrainConfig, flag_name, is_train_config

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(n, p) for p in root.iterdir() if (n := step_of(p)) is not None and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def refuse_incomplete_checkpoints(run_dir: Path, flag: str) -> None:
    """Refuse a run directory whose only checkpoints lack their trainer_state.pt (never written so, see atomic_dir:
    damaged or partly deleted since): it cannot be resumed exactly, and starting over in it would clear weights
    that may be the only copy of those steps. A run with a whole checkpoint resumes from its newest whole one."""
    root = run_dir / "checkpoints"
    broken = sorted((n, p) for p in root.iterdir() if (n := step_of(p)) is not None and p.is_dir()
                    and not (p / "trainer_state.pt").is_file()) if root.is_dir() else []
    if broken and not checkpoint_dirs(run_dir):
        last = broken[-1][1]
        raise ValueError(f"{flag} {run_dir}: its checkpoint {last.name} has no trainer_state.pt (damaged or partly deleted), so "
                         f"the run cannot continue exactly: train on from its weights in a new run, --model {last / 'model'} "
                         f"--out-dir NEW_DIR")


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder step-N, or None for another name. Checkpoints are ordered by it, never by
    name: past six digits "step-1000000" < "step-999999"."""
    m = STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def is_training_run(run_dir: Path) -> bool:
    """`run_dir` holds what `run.py train` writes, finished or not: checkpoints, step logs, or (a run stopped during
    its first step) only its config.json, a training config (with group_size; a model's has a model_type)."""
    if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file() or (run_dir / "final_hf").is_dir():
        return True
    return is_training_config(run_dir)


def is_training_config(out: Path) -> bool:
    """`out`/config.json is one that `run.py train` wrote (with group_size; a model's has a model_type)."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(saved, dict) and "group_size" in saved and "model_type" not in saved


def model_of_run(run_dir: Path) -> Path | None:
    """The model spec a `run.py train` run directory stands for (`--model runs/train`): its newest finished
    checkpoint's model (the final weights once the run has ended, as the last checkpoint is written at the end),
    else `final_hf` (checkpoints deleted); None if `run_dir` is not a run directory."""
    if not is_training_run(run_dir):
        return None
    found = checkpoint_dirs(run_dir)
    if found:
        return found[-1] / "model"
    if (run_dir / "final_hf" / "config.json").is_file():
        return run_dir / "final_hf"
    raise ModelSpecError(f"{run_dir} is a training run with no finished checkpoint or final_hf yet: pass it once its first "
                         "checkpoint is written (--save-every), or pass a model spec")


def checkpoint_config(run_dir: Path) -> dict:
    """The newest checkpoint's train_config.json ({} where it is damaged: its own checks name it when it loads)."""
    try:
        ck = json.loads((checkpoint_dirs(run_dir)[-1] / "train_config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return ck if isinstance(ck, dict) else {}


def with_checkpoint_fields(saved: dict, run_dir: Path) -> dict:
    """config.json's fields, and any it lacks from the newest checkpoint's copy: the value the run last trained
    with, not the field's default (a field deleted by hand took its default: --max-new-tokens 256 where the run had
    48; a field newer than an older run's config.json is in the checkpoints a resume wrote since)."""
    if not is_train_config(saved):  # (another command's config.json over it: resumed_config names that)
        return saved
    fields = TrainConfig.__dataclass_fields__
    return {**{k: v for k, v in checkpoint_config(run_dir).items() if k in fields}, **saved}


def check_against_checkpoint(saved: dict, run_dir: Path) -> None:
    """A run's config.json must describe the run its newest checkpoint continues: one edited by hand, or checkpoints
    copied in from another run, would resume as one run while config.json (and every later checkpoint's copy of it)
    recorded another."""
    ck = checkpoint_config(run_dir)
    newest = checkpoint_dirs(run_dir)[-1] / "train_config.json"
    free = set(RESUME_MAY_CHANGE) | {"resume", "out_dir"}  # (a resume records itself; a run directory may move)
    differ = sorted(k for k in set(saved) & set(ck) & set(TrainConfig.__dataclass_fields__) - free if saved[k] != ck[k])
    if differ:
        what = ", ".join(f"{flag_name(k)} ({saved[k]!r} there, {ck[k]!r} in the checkpoint)" for k in differ)
        raise ValueError(f"--resume {run_dir}: its config.json and its newest checkpoint disagree on {what}: config.json "
                         f"was edited, or the checkpoints come from another run; restore config.json from {newest}")


def remove_leftovers(run_dir: Path) -> str | None:
    """Remove what a killed writer left half-written (`kill -9`, a lost machine: atomic_dir's except never ran), a
    whole checkpoint's size each (1.6 GB for the default model) that rotation and the disk note never count:
    checkpoints/.step-N.tmp-* and .final_hf.tmp-*. Called with the run's lock held, so no writer is live. A note
    saying what went, or None. (An `.old-PID` copy is left: it may be the only whole one, see atomic_dir.)"""
    found = [*(run_dir / "checkpoints").glob(".step-*.tmp-*"), *run_dir.glob(".final_hf.tmp-*")]
    found = [p for p in found if p.is_dir()]
    if not found:
        return None
    size = sum(f.stat().st_size for p in found for f in p.rglob("*") if f.is_file())
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return (f"note: removed {len(found)} half-written checkpoint{'s' * (len(found) > 1)} ({size_text(size)}) that a "
            f"killed run left in {run_dir}")


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, extra: dict, keep: int,
                    config: dict | None = None) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        save_model(model, tokenizer, tmp / "model")
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "python_gauss": random.getstate()[2],  # random.gauss's cached second value (None or a float)
            "extra": extra,
        }
        torch.save(state, tmp / "trainer_state.pt")
        if config is not None:
            (tmp / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints_at_once(step: int, steps: int, save_every: int, keep: int, have: int) -> int:
    """How many checkpoints a run at `step` writes beside the `have` already in its directory, at most at once:
    one every --save-every steps and one at the end, of which keep + 1 exist at once (the newest is written before
    the oldest goes; the final export, one copy of the weights, comes once the oldest has gone)."""
    written = steps // save_every - step // save_every + (steps % save_every != 0)
    return max(1, min(keep + 1, have + written) - have)


def disk_note(run_dir: Path, model, count: int) -> str | None:
    """A note, before the first step, when `run_dir`'s disk cannot hold `count` more checkpoints, each the float32
    weights and AdamW's two moments of the same size (3x the weights). Said at the start: the first checkpoint
    comes only after --save-every steps, hours into a CPU run, and a full disk there stops the run."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # (tied embeddings counted once)
    need = count * 3 * weights
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return None
    if free >= need:
        return None
    return (f"note: {run_dir} has {size_text(free)} free, but this run's checkpoints need {size_text(need)} more there "
            f"({count} of {size_text(3 * weights)}: float32 weights and AdamW's two moments): free space before the first "
            f"checkpoint, or the run stops there")


def size_text(n: int) -> str:
    """Bytes as a person reads them: '1.62 GB', '41.3 MB', '392 kB' (a tiny model's checkpoint is not '0.00 GB')."""
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 0)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n} B"


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore everything in place; returns (step, extra)."""
    try:
        saved = load_model(path / "model", device=model.device, dtype=model.embed.weight.dtype)
    except ModelSpecError as e:  # damaged after it was written (disk, copy), as trainer_state.pt can be below
        raise ModelSpecError(f"checkpoint {path}'s model is damaged ({e}): {way_on(path, False)}") from None
    wrong = [(n, list(p.shape), list(q.shape)) for (n, p), q in zip(model.named_parameters(), saved.parameters()) if p.shape != q.shape]
    if wrong or saved.cfg.n_layers != model.cfg.n_layers:  # (copy_ would raise a size mismatch traceback)
        what = f"{wrong[0][0]} is {wrong[0][2]} there but {wrong[0][1]} in the model" if wrong else "its layers differ"
        raise ModelSpecError(f"checkpoint {path} does not fit the run's --model ({what}): that model changed since the "
                             f"run started; restore it, or start a new run from the checkpoint's weights: --model {path / 'model'} --out-dir NEW_DIR")
    with torch.no_grad():
        for p, q in zip(model.parameters(), saved.parameters()):
            p.copy_(q)
    try:
        state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # a file damaged after it was written (disk, copy): the checkpoint before it is whole
        why = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise ModelSpecError(f"{path / 'trainer_state.pt'} is damaged ({why}): {way_on(path)}") from None
    try:  # a whole file of another shape (another program's, edited): a KeyError or TypeError traceback otherwise
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        r = random.getstate()
        random.setstate((r[0], tuple(state["python_rng"]), state.get("python_gauss")))  # (older checkpoints: none cached)
        step, extra = int(state["step"]), state["extra"]
        if not isinstance(extra, dict):
            raise TypeError(f"'extra' is a {type(extra).__name__}")
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        why = f"no {e.args[0]!r} in it" if isinstance(e, KeyError) else (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelSpecError(f"{path / 'trainer_state.pt'} is not a trainer state this project wrote ({why}): "
                             f"{way_on(path)}") from None
    return step, extra


def way_on(path: Path, weights_whole: bool = True) -> str:
    """How a run goes on past its damaged newest checkpoint `path`: from the one before it, if one is kept."""
    earlier = [p for p in checkpoint_dirs(path.parent.parent) if step_of(p) < step_of(path)]
    if earlier:
        return f"delete {path} to resume from {earlier[-1].name}"
    return "no earlier checkpoint is kept; start the run again" + (
        f", or a new run from its weights: --model {path / 'model'} --out-dir NEW_DIR" if weights_whole else "")


def data_fingerprint(problems) -> str:
    """What a run trains on (the shots, then the train split), recorded in each checkpoint: --gsm8k may change on
    resume (the same files elsewhere), but not to other problems."""
    return hashlib.sha256(json.dumps([[p.question, p.answer] for p in problems]).encode()).hexdigest()


def refuse_other_anchors(run_dir: Path, ckpt: Path, extra: dict, cfg, ref_fp: str | None, data_fp: str) -> None:
    """A resume of an unfinished run must train towards the same reference on the same problems as the run did; the
    checkpoint's `extra` records both (absent in checkpoints from before these records, or a run without a
    reference). Checked before the logs are cut back to the checkpoint."""
    was = extra.get("reference_sha256")
    if ref_fp is not None and was is not None and was != ref_fp:
        # the same shapes, other weights: trained on, the KL term would pull towards another model, silently
        raise ModelSpecError(f"--resume {run_dir}: --model {cfg.model} (the run's frozen reference) is not the model the "
                             "run started from: its weights changed since; restore them, or train on from the checkpoint "
                             f"in a new run (its weights become the reference): --model {ckpt / 'model'} --out-dir NEW_DIR")
    data_was = extra.get("data_sha256")
    if data_was is not None and data_was != data_fp:
        # a step's prompts are positions in the train split: other problems there, and the run trains on them,
        # silently (a review resumed with --gsm8k naming a 5-problem file and trained step 3 on it)
        raise ValueError(f"--resume {run_dir}: the GSM8K train split read now ({cfg.gsm8k or 'GSM8K_DIR, else the hub'}) "
                         "holds other problems than the run trained on (or other --shots examples): point --gsm8k at the "
                         f"run's data, or train on from the checkpoint in a new run: --model {ckpt / 'model'} --out-dir NEW_DIR")
