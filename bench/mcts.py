"""Where tree search spends its time: inside the model's forward passes, or outside (tree bookkeeping, selection,
backup, sampling, text handling, Python). Also checks that the prompt is read once per question.

    GSM8K_DIR=../shared/data/gsm8k python3 bench/mcts.py --batch 8

Target (issue 4): outside-forward time under 10% of the search's wall time at B=8 on the embedded model.
Prints the forward tokens of the search against what re-reading the prompt for every child would cost.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (this file must not hide the mcts package)

import torch  # noqa: E402

from data import encode_prompts, load_gsm8k  # noqa: E402
from mcts.search import SearchConfig, search  # noqa: E402
from cli import add_device, add_gsm8k, add_model, check_args, check_device, parser, user_errors  # noqa: E402
from model_io import load  # noqa: E402
from model_io.model import Transformer  # noqa: E402
from model_io.static_decode import StaticStep  # noqa: E402


def timed(fn, sync, inside: dict):
    """`fn` (a method) timed into inside["seconds"], synchronised before and after, once per outermost timed call
    (inside["depth"]: an eager static step's forward is inside its step). A call during a CUDA graph capture is
    not timed (the capture runs nothing) and must not synchronise: that fails the capture, and decoding falls back
    to eager steps."""

    def run(self, *args, **kw):
        if inside["depth"] or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return fn(self, *args, **kw)
        inside["depth"] += 1
        try:
            sync()
            t = time.perf_counter()
            out = fn(self, *args, **kw)
            sync()
            inside["seconds"] += time.perf_counter() - t
        finally:
            inside["depth"] -= 1
        return out

    return run


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--batch", type=int, default=8, help="B: questions searched together (default: 8)")
    ap.add_argument("--simulations", type=int, default=4, help="default: 4")
    ap.add_argument("--children", type=int, default=4, help="K (default: 4)")
    ap.add_argument("--root", default="puct", choices=["puct", "gumbel"], help="root selection (default: puct)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="default: 192")
    add_gsm8k(ap)
    add_device(ap)
    a = ap.parse_args(argv)
    check_args(ap, a, at_least_1=("batch", "simulations", "children", "max_new_tokens"))
    a.device = check_device(ap, a.device)

    with user_errors(ap):
        problems = load_gsm8k("test", a.gsm8k)[: a.batch]  # first: a wrong --gsm8k costs no model load
        model, tok = load(a.model, device=a.device)
    prompts = encode_prompts(tok, [p.question for p in problems])
    cfg = SearchConfig(n_simulations=a.simulations, children=a.children, max_new_tokens=a.max_new_tokens, root=a.root)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    inside = {"seconds": 0.0, "depth": 0}
    real_forward, real_step = Transformer.forward, StaticStep.__call__

    search(model, tok, prompts[:1], SearchConfig(n_simulations=1, children=2, max_new_tokens=16))  # warm-up
    # every model call of the search goes through forward, except a decode step replayed from a CUDA graph
    Transformer.forward, StaticStep.__call__ = timed(real_forward, sync, inside), timed(real_step, sync, inside)
    try:
        sync()
        t0 = time.perf_counter()
        res = search(model, tok, prompts, cfg)
        sync()
        wall = time.perf_counter() - t0
    finally:
        Transformer.forward, StaticStep.__call__ = real_forward, real_step

    fwd = sum(r.forward_tokens for r in res)
    gen = sum(r.generated_tokens for r in res)
    P = sum(map(len, prompts))
    children = sum(r.nodes - 1 for r in res)
    reread = sum((r.nodes - 1) * len(p) for r, p in zip(res, prompts))  # the prompt again for every child
    print(f"device={a.device} B={a.batch} simulations={a.simulations} K={a.children} root={a.root} max_new_tokens={a.max_new_tokens}")
    print(f"forward tokens: {fwd} (prompts {P} read once, {gen} generated, {fwd - P - gen} path tokens re-read);"
          f" re-reading its prompt for each of the {children} children would add {reread} ({(fwd + reread) / fwd:.2f}x)")
    print(f"wall {wall:.2f}s, inside model forward {inside['seconds']:.2f}s, outside {wall - inside['seconds']:.2f}s")
    print(f"fraction of search time outside the model's forward passes: {(wall - inside['seconds']) / wall:.3f}")


if __name__ == "__main__":
    main()
