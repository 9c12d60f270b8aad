"""Where a decode step's time goes, in one run: the whole step, then the step with its linear layers replayed (each
Linear hands back what it gave at that place in an earlier step, doing no matmul), then with attention replayed too.
The differences are the linear layers (the LM head among them), attention, and the rest (norms, RoPE, cache writes,
elementwise operations, Python and dispatch).

    python bench/decode_split.py --batch 32 --slots 300              # bench/sampler.py's rows, midway
    python bench/decode_split.py --batch 8 --group 4 --slots 80      # GRPO's rollout: 2 prompts x 4 rows

The path a CPU decodes on (`--decode auto`: the dynamic path), one token per row a step after --slots cached tokens
per row (random token ids; every step at that length). `--group G`: B/G prompts whose G rows each read their
prompt's keys/values in place (model_io/shared_kv.py), as GRPO samples; else B rows with a copy each, as eval.
The parts are what taking each away saves, in that order: they share the memory caches (a step without matmuls
leaves attention more of them), so each is the part's cost inside a whole step only roughly. On a GPU a step is
launch-bound and the static path replaces this one (bench/decode_ops.py counts its operations).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402

import model_io.model as M  # noqa: E402
from cli import add_device, add_model, check_args, check_device, parser, user_errors  # noqa: E402
from model_io import load, prefill  # noqa: E402
from model_io.linear import Linear  # noqa: E402
from model_io.shared_kv import SharedKV  # noqa: E402


class Replay:
    """Wraps a function: while recording, calls it and keeps each output in call order; while replaying, hands the
    kept outputs back in the same order without calling it. `calls` counts the real calls."""

    def __init__(self, fn):
        self.fn, self.kept, self.replaying, self.i, self.calls = fn, [], False, 0, 0

    def __call__(self, *a, **k):
        if self.replaying:
            out = self.kept[self.i]
            self.i += 1
            return out
        self.calls += 1
        out = self.fn(*a, **k)
        self.kept.append(out)
        return out

    def start_step(self) -> None:
        self.i = 0
        if not self.replaying:
            self.kept = []


@contextmanager
def replayable():
    """Linear.forward, grouped_attention and SharedKV.attend wrapped in Replays, for the block: -> (linear,
    attention) Replays (attention covers both forms)."""
    lin = Replay(Linear.forward)
    att_plain, att_shared = Replay(M.grouped_attention), Replay(SharedKV.attend)
    saved = (Linear.forward, M.grouped_attention, SharedKV.attend)
    Linear.forward = lambda self, x: lin(self, x)
    M.grouped_attention = att_plain
    SharedKV.attend = lambda self, *a, **k: att_shared(self, *a, **k)
    try:
        yield lin, (att_plain, att_shared)
    finally:
        Linear.forward, M.grouped_attention, SharedKV.attend = saved


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--batch", type=int, default=32, help="B: rows decoded together (default: 32)")
    ap.add_argument("--group", type=int, default=1, help="G: rows sharing each prompt's keys/values; divides --batch "
                    "(default: 1, a copy per row)")
    ap.add_argument("--slots", type=int, default=300, help="cached tokens per row before the timed steps (default: 300)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per form; the median is printed (default: 20)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype (default: float32)")
    add_device(ap)
    args = ap.parse_args(argv)
    check_args(ap, args, at_least_1=("batch", "group", "slots", "steps"))
    if args.batch % args.group:
        ap.error(f"--group {args.group} does not divide --batch {args.batch}: use a --batch of whole groups")
    args.device = check_device(ap, args.device)
    with user_errors(ap):
        model, tok = load(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    if args.slots + 1 > model.cfg.max_position_embeddings:
        ap.error(f"--slots {args.slots} leaves no room in the model's {model.cfg.max_position_embeddings} positions")
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    U, G = args.batch // args.group, args.group
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.cfg.vocab_size, (args.slots,), generator=gen).tolist()  # [S]
    with torch.no_grad():  # one prompt run once, its keys/values copied to U prompts' rows (the time is the same)
        pre = prefill(model, [prompt], room=0, pad_id=tok.pad_token_id or 0).fork(torch.zeros(U, dtype=torch.long),
                                                                                room=0 if G > 1 else 1)
        pre = pre.share(G, room=1) if G > 1 else pre
        cache, pos = pre.cache, pre.next_pos[:, None]  # [B, 1]
        tokens = pre.logits.argmax(-1)[:, None]  # [B, 1]
        length = cache.length
        with replayable() as (lin, atts):

            def step():
                cache.length = length  # every step at the same length: it writes one slot past the cached tokens
                for r in (lin, *atts):
                    r.start_step()
                model(tokens, positions=pos, cache=cache, last_only=True)

            def timed() -> float:
                times = []
                for _ in range(args.steps):
                    sync(); t0 = time.perf_counter()
                    step()
                    sync(); times.append(time.perf_counter() - t0)
                return statistics.median(times) * 1e3

            for _ in range(3):
                step()  # warm-up (packed weights made), and the outputs each replay hands back
            whole = timed()
            lin.replaying = True
            calls = lin.calls
            no_linear = timed()
            assert lin.calls == calls, "a linear layer ran while replayed"
            for a in atts:
                a.replaying = True
            rest = timed()
    print(f"device={dev} threads={torch.get_num_threads()} dtype={args.dtype} rows={args.batch} "
          f"({U} prompts x {G}{', sharing their keys/values' if G > 1 else ''}) cached slots={args.slots} "
          f"steps={args.steps} (medians)")
    print(f"whole step: {whole:.2f} ms")
    print(f"linear layers replayed: {no_linear:.2f} ms; the linear layers: {whole - no_linear:.2f} ms "
          f"({(whole - no_linear) / whole:.0%})")
    print(f"attention replayed too: {rest:.2f} ms; attention: {no_linear - rest:.2f} ms ({(no_linear - rest) / whole:.0%}), "
          f"the rest: {rest:.2f} ms ({rest / whole:.0%})")


if __name__ == "__main__":
    main()
