"""Model files: our checkpoint format, and export to a directory `transformers` loads directly.

Our format (a directory): `model_config.json` (ModelConfig), `model.safetensors` (our parameter names), and the
tokenizer's own files. Export writes `config.json` + `model.safetensors` in transformers' names + tokenizer files,
so `AutoModelForCausalLM.from_pretrained(dir)` serves a trained policy. Weights are only ever read through
safetensors: nothing here unpickles.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
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


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary sibling directory to fill; on success it is renamed over `path`, on any error removed,
    so a crash never leaves half a model (nor replaces a good one)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


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
    cfg = ModelConfig.from_dict(json.loads((p / CONFIG_FILE).read_text()))
    sd = load_file(str(p / WEIGHTS_FILE), device=str(device))
    dtype = dtype or next(iter(sd.values())).dtype
    model = Transformer.empty(cfg, device, dtype)
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelSpecError(f"checkpoint {p} does not match its config: missing {missing}, unexpected {unexpected}")
    return model


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
