"""bench/decode_ops.py: operations per decode step, eager and compiled, on a tiny 2-layer model."""
import importlib.util

import torch
from conftest import ROOT
from helpers import random_prompts, tiny_hf_model

from model_io import prefill
from model_io.convert import from_hf_model
from model_io.static_decode import StaticStep

spec = importlib.util.spec_from_file_location("decode_ops", ROOT / "bench" / "decode_ops.py")
decode_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode_ops)


def test_counts_per_layer_and_fewer_when_compiled():
    model = from_hf_model(tiny_hf_model(dtype=torch.bfloat16))  # 2 layers
    counts = {}
    for compiled in (False, True):
        pre = prefill(model, random_prompts([4, 6]), room=4)
        step = StaticStep(model, pre.cache, pre.next_pos, compiled=compiled)
        fn = decode_ops.compiled_ops if compiled else decode_ops.eager_ops
        counts[compiled] = fn(step, pre.logits.argmax(-1))
    eager, comp = counts[False], counts[True]
    # per layer: q/k/v, o, gate/up, down matmuls, one attention, two norms; plus the final norm and the LM head
    assert eager["linear"] == 2 * 4 + 1 and eager["scaled_dot_product_attention"] == 2 and eager["rms_norm"] == 2 * 2 + 1
    assert not {"view", "transpose", "select"} & set(eager)  # views launch nothing: not counted
    assert comp["extern_kernels.mm"] + comp.get("extern_kernels.addmm", 0) == 2 * 4 + 1  # the same matmuls
    assert 0 < comp["fused kernel"] and sum(comp.values()) < sum(eager.values())
