"""Linear: nn.Linear that, for inference on CPU, multiplies by a oneDNN-packed copy of its weight.

Why: on a CPU, decoding is a row-count-small (M = live rows) matmul against large weights, and MKL's plain
float32 GEMM on a row-major [N, K] weight runs such shapes at a third to a half of the speed of oneDNN on a weight
pre-reordered into its blocked layout (measured on this project's 2-core machine: the 576 x 49152 LM head at
M=32 takes 25 ms plain and 12 ms packed; see docs/RESULTS.md). The packed copy is made on first use and rebuilt
whenever the weight changes by an in-place op (its autograd version counter moves). torch's fused optimizers
(AdamW(fused=True)) update in place without moving it: after such a step, call `drop_packed` (the trainer does).

bf16 (bf16 weights, or float32 weights under CPU bf16 autocast, as `--precision bf16` runs): the copy is packed
in bf16, which on a CPU with AMX runs decode-sized matmuls 3-7x faster than float32 (576 -> 1536 at M=64:
0.09 ms against 0.45 ms; docs/RESULTS.md). Under autocast the result is what autocast's F.linear gives, bf16.
A CPU that oneDNN cannot pack bf16 on (no AVX512-BF16, AMX or AVX-NE-CONVERT) runs bf16 through the plain matmul.
Autograd, GPUs, other dtypes and torch.compile take the plain path.

Set MCTS_GRPO_PACKED_LINEAR=0 to turn it off (the results then differ only by float rounding).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

ENABLED = os.environ.get("MCTS_GRPO_PACKED_LINEAR", "1") != "0" and torch.backends.mkldnn.is_available()
# oneDNN packs bf16 only on a CPU with AVX512-BF16/AMX or AVX-NE-CONVERT; elsewhere (an AVX2-only AMD EPYC, say)
# _reorder_linear_weight raises for bf16, so bf16 takes the plain path there and float32 is still packed
BF16_PACKED = ENABLED and torch.ops.mkldnn._is_mkldnn_bf16_supported()
_PACK_HINT_ROWS = 32  # oneDNN picks its blocking for about this many rows; any row count works
_FLOATS = (torch.float32, torch.bfloat16)


RESIDUAL_IN_GEMM = ("cuda",)  # device types where Linear.add_into folds a residual add into the matmul


class Linear(nn.Linear):
    _packed: tuple[tuple, tuple[torch.Tensor, torch.Tensor | None]] | None = None
    allow_packed: bool = True  # per module: see set_packed

    def _packed_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype of a packed matmul for this call (float32 or bf16), or None: the plain path."""
        w = self.weight
        if not (ENABLED and self.allow_packed and x.device.type == "cpu") or torch.compiler.is_compiling():
            return None  # (torch.compile traces the plain matmul and may pack it itself)
        if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
            return None  # autograd needs the plain op
        if torch.is_autocast_enabled("cpu"):  # autocast casts F.linear, not the packed op: do its cast here
            dt = torch.get_autocast_dtype("cpu")
            return dt if dt == torch.bfloat16 and BF16_PACKED and x.dtype in _FLOATS and w.dtype in _FLOATS else None
        packable = (torch.float32, torch.bfloat16) if BF16_PACKED else (torch.float32,)
        return x.dtype if x.dtype == w.dtype and x.dtype in packable else None

    def packed_weight(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(packed weight, bias) in `dtype`, remade when the weight changes or another dtype is asked for."""
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, id(w), dtype, None if b is None else (b.data_ptr(), b._version))
        if self._packed is None or self._packed[0] != key:
            b = None if b is None else b.detach().to(dtype)
            self._packed = (key, (torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), _PACK_HINT_ROWS), b))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self._packed_dtype(x)
        if dt is not None:
            w, b = self.packed_weight(dt)
            return torch.ops.mkldnn._linear_pointwise(x.to(dt), w, b, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def __getstate__(self):
        """A copy (copy.deepcopy, pickle) leaves the packed weight behind: oneDNN's opaque tensor has no storage to
        copy (deepcopy raised after any no-grad pass), and the copy packs its own weight on first use."""
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    def add_into(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + self(x). On a GPU, without autocast and all in one dtype, one addmm: the GEMM adds the residual
        in its epilogue (and rounds once), so a decode step launches 2 kernels fewer a layer (60 in SmolLM2-135M, of
        500). Under autocast the residual stream is float32 and the matmul bf16: the plain add keeps it float32.
        A training pass and its no-grad recomputation take the same path (neither condition is the grad mode)."""
        if (x.device.type in RESIDUAL_IN_GEMM and self.bias is None and not torch.is_autocast_enabled(x.device.type)
                and residual.dtype == x.dtype == self.weight.dtype):
            out = torch.addmm(residual.reshape(-1, self.out_features), x.reshape(-1, self.in_features), self.weight.t())
            return out.view(residual.shape)
        return residual + self(x)


def set_packed(model: nn.Module, allow: bool) -> None:
    """Allow or forbid packed copies in every Linear of `model`. A packed copy doubles a weight's memory: a model
    that only runs long teacher-forced passes (GRPO's reference: large row counts, where packing gains ~20%)
    is better off without one."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.allow_packed = allow
            m._packed = None


@contextmanager
def unpacked(model: nn.Module):
    """Within: every Linear of `model` takes the plain matmul, as under autograd. For a no-grad pass whose numbers
    must equal those of a training pass bit for bit (GRPO's recomputed old log-probs): the packed and the plain
    kernels round differently."""
    mods = [m for m in model.modules() if isinstance(m, Linear)]
    before = [m.allow_packed for m in mods]
    for m in mods:
        m.allow_packed = False
    try:
        yield
    finally:
        for m, allow in zip(mods, before):
            m.allow_packed = allow


def drop_packed(model: nn.Module) -> None:
    """Free the packed copies (they are rebuilt on next use): GRPO calls this after sampling, so that the copies
    do not sit in memory beside the activations of the backward pass, and would be stale after the update anyway."""
    for m in model.modules():
        if isinstance(m, Linear):
            m._packed = None
