"""Grouped-query attention under a mask: SDPA's `enable_gqa` against model_io.model.grouped_attention (the query
heads of a key/value head stacked as rows), side by side in one run, at the shapes the project runs.

    python bench/attention.py                          # SmolLM2-135M's heads, decode at batch 64 + a training pass
    python bench/attention.py --device cuda --dtype bfloat16

Every decode step and training pass attends under a mask (padding, the static step's unwritten slots). Flash
attention takes no mask, and a kernel that does not take `enable_gqa` with one leaves SDPA its math path, which
copies the keys/values g = H / H_kv times and writes out the scores; stacked, the heads match and any kernel can
take the call. Prints, per shape, ms per call of each form and their ratio; on CUDA also whether a fused kernel
takes each form (SDPA's math path switched off: "math" where none does).
Shapes: `decode` is one static decode step (batch rows x 1 query over the whole cache: prompt + new tokens);
`train` is one layer's attention in a training pass, forward and backward (rows x new tokens over prompt + new
tokens). Each form gets the mask the model gave it: `enable_gqa` the static step's additive mask and the
training pass's bool one, as before; `stacked` the additive, stacked, aligned one of `stacked_mask`, which a
forward now makes once for all its layers (so its making is not timed).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cli import add_device, check_args, check_device, out_of_memory, parser  # noqa: E402
from machine import ms_per_call  # noqa: E402
from model_io.model import grouped_attention, stacked_mask  # noqa: E402


def with_enable_gqa(q, k, v, mask):
    """The call model_io/model.py made before grouped_attention and stacked_mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


FORMS = {"enable_gqa": with_enable_gqa, "stacked": grouped_attention}


def inputs(kind: str, a, dtype: torch.dtype, device: str):
    """q [B, H, T, D], k, v [B, H_kv, S, D] of one `kind` call (a fixed random draw), and each form's mask as the
    model hands it over: before, the static step's additive [B, 1, 1, S] and the training pass's bool [B, 1, T, S];
    now both from `stacked_mask` (additive, stacked, aligned; made once per forward, so outside the timing)."""
    g = torch.Generator(device=device).manual_seed(0)
    S = a.prompt_len + a.new_tokens
    B, T = (a.batch, 1) if kind == "decode" else (a.train_rows, a.new_tokens)
    q = torch.randn(B, a.heads, T, a.head_dim, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(B, a.kv_heads, S, a.head_dim, device=device, dtype=dtype, generator=g) for _ in range(2))
    pad = (torch.rand(B, 1, 1, S, device=device, generator=g) * S).long() < S // 10  # ~a tenth of the slots: padding
    slot = torch.arange(S, device=device)
    if kind == "decode":  # half the cache written so far: the rest masked, as in the static step
        allowed = ~pad & (slot < a.prompt_len + a.new_tokens // 2)  # [B, 1, 1, S]
        before = torch.zeros(B, S, device=device, dtype=dtype).masked_fill(~allowed[:, 0, 0], float("-inf"))[:, None, None, :]
    else:
        causal = slot[None] <= (a.prompt_len + torch.arange(T, device=device))[:, None]  # [T, S]
        allowed = before = (causal & ~pad) | (slot[None] == (a.prompt_len + torch.arange(T, device=device))[:, None])
    return q, k, v, {"enable_gqa": before, "stacked": stacked_mask(allowed, a.heads // a.kv_heads, dtype)}


def fused(fn, q, k, v, mask, backward: bool) -> str:
    """On CUDA: 'fused' if a fused kernel takes the call with SDPA's math path off, else 'math'."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            y = fn(q, k, v, mask)
            if backward:
                y.float().sum().backward()
        return "fused"
    except RuntimeError as e:  # SDPA's "No available kernel", or anything else, said as it is
        return "math" if "No available kernel" in str(e) else f"failed: {str(e).splitlines()[0][:100]}"


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--heads", type=int, default=9, help="query heads H (default: 9, SmolLM2-135M's)")
    ap.add_argument("--kv-heads", type=int, default=3, help="key/value heads H_kv (default: 3)")
    ap.add_argument("--head-dim", type=int, default=64, help="D (default: 64)")
    ap.add_argument("--batch", type=int, default=64, help="rows of the decode step (default: 64)")
    ap.add_argument("--train-rows", type=int, default=8, help="rows of the training pass (default: 8, a micro-batch)")
    ap.add_argument("--prompt-len", type=int, default=340, help="prompt slots (default: 340, a 2-shot GSM8K prompt)")
    ap.add_argument("--new-tokens", type=int, default=256, help="completion tokens (default: 256)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                    help="(default: bfloat16 on CUDA, float32 on a CPU)")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per figure (default: 20)")
    add_device(ap)
    a = ap.parse_args(argv)
    check_args(ap, a, at_least_1=("heads", "kv_heads", "head_dim", "batch", "train_rows", "prompt_len", "new_tokens", "reps"))
    if a.heads % a.kv_heads:
        ap.error(f"--heads ({a.heads}) must be a multiple of --kv-heads ({a.kv_heads})")
    a.device = check_device(ap, a.device)
    cuda = a.device.startswith("cuda")
    dtype = getattr(torch, a.dtype or ("bfloat16" if cuda else "float32"))
    name = torch.cuda.get_device_name(a.device) if cuda else "CPU"
    print(f"device {name}, {dtype}, H={a.heads}, H_kv={a.kv_heads}, D={a.head_dim}, prompt {a.prompt_len} + {a.new_tokens} new tokens")
    with out_of_memory(ap, "--batch, --train-rows, --prompt-len, --new-tokens, --heads or --head-dim"):
        measure_all(a, dtype, cuda)


def measure_all(a, dtype: torch.dtype, cuda: bool) -> None:
    """Each attention form's time for a decode step and a training pass, printed as measured."""
    for kind in ("decode", "train"):
        q, k, v, masks = inputs(kind, a, dtype, a.device)
        backward = kind == "train"
        if backward:
            q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
        times, kernels = {}, {}
        for form, fn in FORMS.items():
            m = masks[form]
            run = (lambda fn=fn, m=m: fn(q, k, v, m).float().sum().backward()) if backward else (lambda fn=fn, m=m: fn(q, k, v, m))
            with torch.set_grad_enabled(backward):
                times[form] = ms_per_call(run, a.reps, a.device)
                kernels[form] = fused(fn, q, k, v, m, backward) if cuda else "-"
        shape = f"{q.shape[0]} rows x {q.shape[2]} queries over {k.shape[2]} keys" + (", forward + backward" if backward else "")
        print(f"{kind}: {shape}")
        for form in FORMS:
            print(f"{kind} {form}: {times[form]:.3f} ms per call" + (f" ({kernels[form]})" if cuda else ""))
        print(f"{kind} enable_gqa / stacked: {times['enable_gqa'] / times['stacked']:.2f}x")

if __name__ == "__main__":
    main()
