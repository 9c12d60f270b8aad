"""Precision: whether the matmuls run in bf16 or float32 (`--precision` of train, eval and sample).

bf16 pays where the hardware multiplies bf16 much faster than float32: a CUDA GPU's tensor cores, or a CPU with
AMX-BF16 (Intel Xeon 4th generation, Sapphire Rapids, and later). On this project's 2-core AMX machine a bf16
matmul of training's shapes runs at ~2,000 GFLOP/s against float32's 120-330, and the default GRPO step took
115-145 s in bf16 against 284 s in float32 (docs/RESULTS.md). On a CPU without AMX, bf16 is emulated and slower
than float32, so `auto` picks float32 there.

What bf16 means per command:
- train: bf16 autocast over float32 master weights and optimizer state (mixed precision, Micikevicius et al.
  2018), the LM head and log-probs in float32 (Transformer.logits);
- eval, sample: bf16 weights (half the memory; nothing to update, so no float32 copy is needed), the LM head
  upcast to float32.
"""
from __future__ import annotations

import contextlib
from dataclasses import field

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown --precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return name


def precision_field():
    """The `precision` field of a command's config (one help text for train, eval and sample)."""
    return field(default="auto", metadata={"help": "matmul precision: auto (bf16 on a CUDA GPU or on a CPU with AMX-BF16, "
                                                   "float32 elsewhere), fp32 or bf16; train keeps float32 master weights "
                                                   "under bf16 autocast, eval and sample load bf16 weights"})


def cpu_has_fast_bf16() -> bool:
    """Does this CPU multiply bf16 matrices in hardware (AMX-BF16)? AVX512-BF16 alone only converts and dots
    vectors: not enough for bf16 to beat float32's GEMM."""
    caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    try:
        return bool(caps is not None and caps().get("amx_bf16", False))
    except Exception:  # noqa: BLE001 (an older torch or an unusual platform: assume not)
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for `name` on `device` ('auto': bf16 where bf16 matmuls are fast)."""
    check_precision(name)
    if name != "auto":
        return name
    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    return "bf16" if fast else "fp32"


def slow_bf16_note(precision: str, device: torch.device) -> str | None:
    """A line for bf16 asked for (or recorded by a resumed run) on a CPU where it is slow; None elsewhere."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_fast_bf16():
        return None
    return ("note: bf16 on a CPU without AMX-BF16 is slower than float32 at most of decode's and training's sizes (2-8x on "
            "an AVX2 CPU, up to 1.5x with AVX512-BF16; python3 bench/linear.py measures this one); --precision fp32, what "
            "auto picks here, is faster")


def check_master_weights(model: torch.nn.Module) -> None:
    """Training updates float32 (or float64) weights, bf16 being autocast over them: bf16 weights themselves round updates of
    lr ~1e-6 away (a review's step on bf16 weights moved 206 of 94,912 parameters, on float32 ones 87,616)."""
    dtype = next(model.parameters()).dtype
    if torch.finfo(dtype).bits < 32:  # (float64, as the exactness tests train, only adds precision)
        raise ValueError(f"the Trainer trains float32 master weights, not {dtype}: load the model with "
                         "dtype=torch.float32 (bf16 runs as autocast over them: TrainConfig.precision)")


def weights_dtype(precision: str) -> torch.dtype:
    """The weights' dtype of an inference command (eval, sample) at a resolved precision."""
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def mixed_precision(precision: str, device: torch.device):
    """A context manager factory for training's passes: bf16 autocast at 'bf16', nothing at 'fp32'."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def store_frozen_linears_in(model: torch.nn.Module, precision: str) -> None:
    """A frozen model that runs only under training's autocast (GRPO's reference) keeps its linear layers'
    weights in bf16 at precision 'bf16'. Autocast casts them to bf16 at every call anyway (its cast cache keeps
    only leaves that require grad), so the passes are bitwise the same, with half the memory for those weights and
    none of the casts (a pass over ~430 MB of float32 weights per forward for the default model). The LM head, the
    embedding and the norms stay float32, as autocast leaves them (Transformer.logits keeps the head float32)."""
    if precision != "bf16":
        return
    head = getattr(model, "lm_head", None)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m is not head:
            assert not m.weight.requires_grad, "only a frozen model's weights may be stored in bf16"
            m.weight.data = m.weight.data.to(torch.bfloat16)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(torch.bfloat16)
