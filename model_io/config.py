"""ModelConfig: the few numbers our decoder needs, read from a transformers config.

Supported families: Llama (SmolLM2, Llama-2/3.x, incl. `llama3` RoPE scaling) and Qwen2 (q/k/v bias).
Anything else is refused with one line naming what is supported.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_ARCHS = ("llama", "qwen2")


class ModelSpecError(ValueError):
    """A model spec, config or checkpoint that this project cannot use; the message says why and what to do."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "qwen2"
    vocab_size: int  # V
    dim: int  # C, the residual width
    n_layers: int  # L
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (grouped-query attention when < n_heads)
    head_dim: int  # D
    intermediate_size: int  # SwiGLU hidden width
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # e.g. {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.arch not in SUPPORTED_ARCHS:
            raise ModelSpecError(f"unsupported architecture {self.arch!r}: supported are {', '.join(SUPPORTED_ARCHS)}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):  # a hand-edited or damaged config fails here, not deep in a layer
            v = getattr(self, name)
            if type(v) is not int or v <= 0:
                raise ModelSpecError(f"{name} must be a positive integer, got {v!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not v > 0:
                raise ModelSpecError(f"{name} must be a positive number, got {v!r}")
        if self.rope_scaling is not None:  # (from_hf checks a transformers config; this, our own checkpoint's)
            keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                      "original_max_position_embeddings")}.get(self.rope_scaling.get("rope_type"))
            if keys is None:
                raise ModelSpecError(f"unsupported RoPE scaling {self.rope_scaling.get('rope_type')!r}: supported are default, "
                                     "linear, llama3")
            missing = [k for k in keys if not isinstance(self.rope_scaling.get(k), (int, float))]
            if missing:
                raise ModelSpecError(f"RoPE scaling {self.rope_scaling['rope_type']!r} needs numbers for {', '.join(missing)}")
        if self.n_heads % self.n_kv_heads:
            raise ModelSpecError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    # ---- (de)serialisation of our own checkpoints ----
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "extra"}  # an unused field of earlier checkpoints (always {})
        unknown = set(d) - names
        if unknown:
            raise ModelSpecError(f"checkpoint config has unknown fields {sorted(unknown)}: it was written by another version")
        d = dict(d)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)

    @classmethod
    def from_hf(cls, hf) -> "ModelConfig":
        """Read a `transformers` PretrainedConfig (v4 or v5 field names)."""
        arch = getattr(hf, "model_type", None)
        if arch not in SUPPORTED_ARCHS:
            raise ModelSpecError(
                f"unsupported architecture {arch!r}: supported are {', '.join(SUPPORTED_ARCHS)} "
                "(Llama family incl. SmolLM2 and Llama-3.x, Qwen2 family incl. Qwen2.5)"
            )
        # Qwen2 slides its window only in layers from max_window_layers on (transformers' layer_types): with
        # use_sliding_window set but max_window_layers >= the layer count, every layer attends fully, as here
        types = getattr(hf, "layer_types", None) or []
        n = getattr(hf, "num_hidden_layers", 0)
        sliding = (any(t != "full_attention" for t in types) if types else
                   getattr(hf, "use_sliding_window", False) and getattr(hf, "max_window_layers", 0) < n)
        if sliding:
            raise ModelSpecError("Qwen2 sliding-window attention is not supported: use a checkpoint with use_sliding_window=false "
                                 "(or max_window_layers >= num_hidden_layers, where no layer slides)")
        if getattr(hf, "hidden_act", "silu") != "silu":
            raise ModelSpecError(f"unsupported activation {hf.hidden_act!r}: only SwiGLU (silu) models are supported")
        if getattr(hf, "mlp_bias", False) or (arch == "llama" and getattr(hf, "attention_bias", False)):
            raise ModelSpecError("Llama checkpoints with attention_bias or mlp_bias are not supported")
        # transformers v5 keeps theta and scaling together in `rope_parameters`; v4 had `rope_theta` + `rope_scaling`.
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        if not rope:
            rope = dict(getattr(hf, "rope_scaling", None) or {})
            rope.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
        theta = float(rope.pop("rope_theta", getattr(hf, "rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rope_type == "default" else {**rope, "rope_type": rope_type}
        if scaling is not None and rope_type not in ("llama3", "linear"):
            raise ModelSpecError(f"unsupported RoPE scaling {rope_type!r}: supported are default, linear, llama3")
        n_heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // n_heads
        eos = hf.eos_token_id
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        if any(not 0 <= e < hf.vocab_size for e in eos):  # an id no row can sample: rows would never end at it
            raise ModelSpecError(f"the config's eos_token_id {eos[0] if len(eos) == 1 else list(eos)} lies outside the model's "
                                 f"{hf.vocab_size} tokens: set it to the id of the model's end-of-turn token")
        return cls(
            arch=arch,
            vocab_size=hf.vocab_size,
            dim=hf.hidden_size,
            n_layers=hf.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(hf, "num_key_value_heads", None) or n_heads,
            head_dim=head_dim,
            intermediate_size=hf.intermediate_size,
            rms_norm_eps=float(hf.rms_norm_eps),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=(arch == "qwen2") or bool(getattr(hf, "attention_bias", False)),
            eos_token_ids=eos,
            bos_token_id=getattr(hf, "bos_token_id", None),
            pad_token_id=getattr(hf, "pad_token_id", None),
        )

    def to_hf(self):
        """The equivalent `transformers` config, for export (`AutoModelForCausalLM.from_pretrained` loads it)."""
        from transformers import LlamaConfig, Qwen2Config

        cls = LlamaConfig if self.arch == "llama" else Qwen2Config
        kw: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.dim,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            eos_token_id=list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else (self.eos_token_ids or (None,))[0],
            bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
        )
        kw["head_dim"] = self.head_dim  # both families read it (Qwen2 too), and it need not be hidden / heads
        return cls(**kw)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [D/2] of rotary embeddings (RoFormer, Su et al. 2021), float32 as transformers computes them."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":
        return inv_freq / s["factor"]
    # llama3 (Llama 3.1 report): keep high frequencies, divide low frequencies by `factor`, interpolate smoothly between.
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_ctx / lo, old_ctx / hi
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)
