"""Linear: nn.Linear that, for inference on CPU, multiplies by a oneDNN-packed copy of its weight.

Why: on a CPU, decoding is a row-count-small (M = live rows) matmul against large weights, and MKL's plain
float32 GEMM on a row-major [N, K] weight runs such shapes at a third to a half of the speed of oneDNN on a weight
pre-reordered into its blocked layout (measured on this project's 2-core machine: the 576 x 49152 LM head at
M=32 takes 25 ms plain and 12 ms packed; see docs/RESULTS.md). The packed copy is made on first use and rebuilt
whenever the weight changes (its autograd version counter moves on every in-place optimizer update), so a
trained weight is never stale. Autograd, GPUs, non-float32 dtypes, CPU autocast and torch.compile take the
plain path.

Set MCTS_GRPO_PACKED_LINEAR=0 to turn it off (the results then differ only by float rounding).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ENABLED = os.environ.get("MCTS_GRPO_PACKED_LINEAR", "1") != "0" and torch.backends.mkldnn.is_available()
_PACK_HINT_ROWS = 32  # oneDNN picks its blocking for about this many rows; any row count works


class Linear(nn.Linear):
    _packed: tuple[tuple[int, int, int], torch.Tensor] | None = None
    allow_packed: bool = True  # per module: see set_packed

    def _use_packed(self, x: torch.Tensor) -> bool:
        return (
            ENABLED
            and self.allow_packed
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad))
            and not torch.compiler.is_compiling()  # torch.compile traces the plain matmul (and may pack it itself)
            and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear, not the packed op: keep its dtype
        )

    def packed_weight(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, id(w))
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), _PACK_HINT_ROWS))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def set_packed(model: nn.Module, allow: bool) -> None:
    """Allow or forbid packed copies in every Linear of `model`. A packed copy doubles a weight's memory: a model
    that only runs long teacher-forced passes (GRPO's reference: large row counts, where packing gains ~20%)
    is better off without one."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.allow_packed = allow
            m._packed = None


def drop_packed(model: nn.Module) -> None:
    """Free the packed copies (they are rebuilt on next use): GRPO calls this after sampling, so that the copies
    do not sit in memory beside the activations of the backward pass, and would be stale after the update anyway."""
    for m in model.modules():
        if isinstance(m, Linear):
            m._packed = None
