"""Operations in one static decode step, eager and compiled (`--decode compiled`), side by side in one run.

    python bench/decode_ops.py --batch 4 --dtype bfloat16

On a GPU each operation is a kernel launch (inside the CUDA graph too, where each still costs a few
microseconds), which is what bounds a small model's decode step there; this counts them on any device.
Both count the same part of the step, StaticStep._eager (the forward and the copy of its logits into the step's
buffer; the step's three bookkeeping operations around it, the token copy and two position increments, run eagerly
either way and are left out of both). Eager: top-level compute operations in torch.profiler's trace (views and
casts to the same dtype launch nothing and are not counted). Compiled: kernel calls in the code inductor generates
for the forward (fused kernels, matmuls, attention), read from its output code, and the logits copy run after it.
Prints both and the ratio last; the compiled line ends with the time the compile and its first step took
(cold where TORCHINDUCTOR_CACHE_DIR names an empty folder: inductor keeps what it compiled on disk).
"""
from __future__ import annotations

import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402

from cli import add_device, add_model, check_args, check_device, parser, user_errors  # noqa: E402
from model_io import load, prefill  # noqa: E402
from model_io.static_decode import StaticStep  # noqa: E402

# operations that only make a new view of a tensor: no kernel
VIEWS = {"select", "transpose", "slice", "view", "chunk", "split", "split_with_sizes", "reshape", "unsqueeze",
         "expand", "as_strided", "t", "permute", "alias", "detach", "_unsafe_view", "unbind", "squeeze",
         "promote_types", "result_type"}
OPS = ("aten::", "mkldnn::")  # operator namespaces (mkldnn: the packed CPU linear, model_io/linear.py)
# a kernel call in inductor's generated `call` function (C++ kernels on CPU, Triton on GPU, library calls)
KERNEL_CALL = re.compile(r"^\s+(?:\w+ = )?(cpp_fused_\w+\(|triton_\w+\.run\(|extern_kernels\.\w+\(|torch\.ops\.\w+\.\w+(?:\.\w+)?\()")


def eager_ops(step: StaticStep, tok: torch.Tensor) -> collections.Counter:
    from torch.profiler import ProfilerActivity, profile

    step(tok)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step._eager()  # (what the compiled count covers: see the module's docstring)
    out = collections.Counter()
    for e in prof.events():
        if not e.name.startswith(OPS) or (e.cpu_parent is not None and e.cpu_parent.name.startswith(OPS)):
            continue  # not an operation, or one called inside another
        name = e.name.split("::", 1)[1]
        name = "linear" if name == "_linear_pointwise" else name  # model_io.linear's packed CPU matmul
        if name in VIEWS or (name == "to" and not any(c.name == "aten::_to_copy" for c in e.cpu_children)):
            continue
        out[name] += 1
    return out


def compiled_ops(step: StaticStep, tok: torch.Tensor) -> collections.Counter:
    from torch._inductor.utils import run_and_get_code

    _, codes = run_and_get_code(step, tok)  # the first call compiles: its generated code comes back
    # static_decode.compiled_step compiles by region, in this order: the step's start, one layer (which every layer
    # runs: a second layer graph would be a recompile per layer), the end
    assert len(codes) == 3, f"{len(codes)} compiled graphs for one step, not 3 (start, the layer, end)"
    out = collections.Counter()
    for code, times in zip(codes, (1, step.model.cfg.n_layers, 1)):
        body = code[code.index("def call(") :] if "def call(" in code else ""
        for line in body.splitlines():
            m = KERNEL_CALL.match(line)
            if m:
                kind = m.group(1)
                out["fused kernel" if kind.startswith(("cpp_fused", "triton")) else kind.rstrip("(")] += times
    out["copy_"] += 1  # StaticStep._eager copies the compiled function's logits into its buffer, outside the graph
    return out


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--batch", type=int, default=4, help="rows decoded together (default: 4)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights' dtype (default: bfloat16)")
    add_device(ap)
    args = ap.parse_args(argv)
    check_args(ap, args, at_least_1=("batch",))
    args.device = check_device(ap, args.device)

    with user_errors(ap):
        model, tok = load(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    prompts = [tok("What is 2 + 3?", add_special_tokens=False)["input_ids"]] * args.batch
    counts = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        pre = prefill(model, prompts, room=8, pad_id=tok.pad_token_id or 0)
        step = StaticStep(model, pre.cache, pre.next_pos, graph=False, compiled=compiled)
        first = pre.logits.argmax(-1)
        t0 = time.perf_counter()
        counts[name] = compiled_ops(step, first) if compiled else eager_ops(step, first)
        c = counts[name]
        took = f"; compile and first step {time.perf_counter() - t0:.1f}s" if compiled else ""
        print(f"{name} operations per decode step: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.most_common())}){took}")
    print(f"device={args.device} dtype={args.dtype} batch={args.batch} layers={model.cfg.n_layers}")
    print(f"ratio eager/compiled operations: {sum(counts['eager'].values()) / max(sum(counts['compiled'].values()), 1):.2f}")


if __name__ == "__main__":
    main()
