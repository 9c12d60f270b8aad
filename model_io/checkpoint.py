"""Model files: our checkpoint format, and export to a directory `transformers` loads directly.

Our format (a directory): `model_config.json` (ModelConfig), `model.safetensors` (our parameter names), and the
tokenizer's own files. Export writes `config.json` + `model.safetensors` in transformers' names + tokenizer files,
so `AutoModelForCausalLM.from_pretrained(dir)` serves a trained policy. Weights are only ever read through
safetensors: nothing here unpickles.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, ModelSpecError
from .convert import to_hf_state_dict
from .model import Transformer

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def model_state(model: Transformer) -> dict[str, torch.Tensor]:
    """State dict without the tied LM head (safetensors refuses two names for one tensor)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        del sd["lm_head.weight"]
    return sd


def weights_fingerprint(model: Transformer) -> str:
    """SHA-256 of every parameter's name, dtype, shape and bytes (tied weights once): equal exactly when the
    weights are, whichever device holds them. A resumed GRPO run rebuilds its frozen reference from the base
    --model and checks it against the run's record with this (135M float32 parameters: ~0.4 s on a CPU)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name} {p.dtype} {tuple(p.shape)}\n".encode())
        h.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().data)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask. It can only be read by setting it: the brief stand-in is 0o077, so a file another thread
    creates meanwhile comes out more private, never more open."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def open_to_umask(root: Path) -> None:
    """Give `root` and everything under it the modes a plain mkdir / open would (0o777 / 0o666 less the umask):
    mkdtemp makes 0700 directories and safetensors 0600 files, which other users (a TensorBoard or eval job, a
    teammate) could not read."""
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for d, dirs, files in os.walk(root):
        for name in dirs:
            Path(d, name).chmod(0o777 & ~mask)
        for name in files:
            Path(d, name).chmod(0o666 & ~mask)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's contents to the disk. A rename is atomic against a crash of the process, but
    after a power cut or a kernel crash the new name may point at data never written (ext4 and xfs may commit a rename
    before the data it names) unless that data was synced first. A file system that refuses a directory's fsync
    (EINVAL on some network mounts) is left at what it offers."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if not (os.path.isdir(path) and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file under `root`, then each directory that holds them, flushed to the disk (fsync_path)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a sibling file renamed over it: a reader, or a run interrupted here (or the
    machine losing power), finds the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary sibling directory to fill; on success it is renamed over `path`, on any error removed,
    so a crash never leaves half a model (nor replaces a good one with one); its files are synced to the disk
    before the rename (fsync_tree), so a power cut does not either. What it holds gets the umask's modes.
    Replacing an existing directory takes two renames (POSIX rename cannot swap two directories): a crash in the
    instant between them leaves `path` missing and the old copy whole, beside it as `.NAME.old-PID`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        open_to_umask(tmp)
        fsync_tree(tmp)
    except BaseException as e:
        full = disk_full(final, e)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from e
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    fsync_path(final.parent)  # the rename itself


FULL_BELOW = 64 << 20  # bytes: a write that failed with less than this left on its disk is taken as the disk filling


def disk_full(path: Path, e: BaseException) -> OSError | None:
    """An OSError(ENOSPC) naming `path`, when the failed write `e` into it ran out of disk: torch.save then says
    only "[enforce fail at inline_container.cc] unexpected pos", safetensors "I/O error ... (os error 28)".
    Judged by the error where it says so, else by the space left (the half-written files still hold theirs)."""
    if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    if not isinstance(e, (OSError, RuntimeError, SafetensorError)):
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    said = isinstance(e, OSError) or "os error 28" in str(e) or "No space left" in str(e)
    if not said and free >= FULL_BELOW:
        return None
    return OSError(errno.ENOSPC, f"no space left on the disk of {path} ({free / 2**20:.0f} MiB free when the write "
                                 f"failed; nothing was left half-written): free space there")


def save_model(model: Transformer, tokenizer, path: str | os.PathLike) -> Path:
    """Write our checkpoint format (a complete model spec for `model_io.load`), atomically."""
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2))
        save_file({k: v.cpu() for k, v in model_state(model).items()}, str(tmp / WEIGHTS_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(path)


def load_model(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    p = Path(path)
    if not is_checkpoint(p):
        raise ModelSpecError(f"{p} is not a checkpoint of this project (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg = read_config(p / CONFIG_FILE)
    sd = read_weights(p / WEIGHTS_FILE, device)
    dtype = dtype or next(iter(sd.values())).dtype
    model = Transformer.empty(cfg, device, dtype)
    if cfg.tie_word_embeddings and "embed.weight" in sd:
        sd["lm_head.weight"] = sd["embed.weight"]
    # load_state_dict(strict=False) still raises, with a traceback per tensor, on a shape mismatch: check first
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        raise ModelSpecError(f"checkpoint {p} does not match its config: missing {missing}, unexpected {unexpected}")
    wrong = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in want.items() if sd[k].shape != v.shape]
    if wrong:
        k, got, need = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ModelSpecError(f"checkpoint {p} does not match its config: {k} is {list(got)} in {WEIGHTS_FILE} but "
                             f"{list(need)} by {CONFIG_FILE}{more}; restore the {CONFIG_FILE} it was saved with")
    model.load_state_dict(sd, strict=True)
    check_finite(str(p), model)
    return model


def check_finite(spec: str, model: torch.nn.Module) -> None:
    """Weights holding NaN or inf (a file damaged in place, a run that diverged) are refused as they load: they run,
    and every loss, update and answer after them is NaN (an audit's training run skipped each update, then blamed
    the learning rate, and exported NaN weights)."""
    # a sum carries any NaN or inf (a tenth of the time of isfinite over every value); one that overflows alone is
    # looked at value by value
    bad = [name for name, w in model.named_parameters()
           if not torch.isfinite(w.detach().sum(dtype=torch.float32)) and not bool(torch.isfinite(w).all())]
    if bad:
        raise ModelSpecError(f"{spec}: {len(bad)} weight tensor{'s hold' if len(bad) > 1 else ' holds'} NaN or inf (first: {bad[0]}): its "
                             f"weights file is damaged, or the training that wrote it diverged; pass another model")


def read_config(path: Path) -> ModelConfig:
    """A checkpoint's model_config.json, or a ModelSpecError naming the file."""
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise ValueError(f"a JSON object was expected, not {type(d).__name__}")
        return ModelConfig.from_dict(d)
    except ModelSpecError as e:
        raise ModelSpecError(f"{path}: {e}") from None
    except (ValueError, TypeError, RecursionError) as e:  # (UnicodeDecodeError is a ValueError)
        raise ModelSpecError(f"{path} is not a readable model config ({e}): restore it from the checkpoint it came "
                             "from, or pass another model") from None


def read_weights(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """A safetensors file, or a ModelSpecError naming it when it is corrupt or truncated."""
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise ModelSpecError(f"{path} is corrupt or truncated ({e}): copy or download it again") from None


def export_hf(model: Transformer, tokenizer, path: str | os.PathLike) -> Path:
    """Write a directory that `transformers.AutoModelForCausalLM.from_pretrained(path)` loads directly."""
    with atomic_dir(path) as tmp:
        hf_cfg = model.cfg.to_hf()
        hf_cfg.architectures = ["LlamaForCausalLM" if model.cfg.arch == "llama" else "Qwen2ForCausalLM"]
        hf_cfg.dtype = str(model.embed.weight.dtype).removeprefix("torch.")
        hf_cfg.save_pretrained(str(tmp))
        sd = {k: v.cpu() for k, v in to_hf_state_dict(model).items()}
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(path)
