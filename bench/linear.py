"""The CPU linear layer at decode's row counts: plain matmul against model_io.linear's oneDNN-packed weight, in
float32 and bf16, side by side in one run.

    python bench/linear.py                      # SmolLM2-135M's shapes, rows 1, 8, 32, 64
    python bench/linear.py --rows 9,32 --shapes 576x49152

Decoding multiplies a few rows (the live rows of the batch) by large weights. Whether packing pays, and whether
bf16 beats float32, depends on the CPU: AMX-BF16 makes bf16 fast; without AVX512-BF16/AMX/AVX-NE-CONVERT
oneDNN cannot pack bf16 at all and a bf16 matmul is emulated. This prints ms per call for each path through
model_io.linear.Linear (the module the model runs; `allow_packed` off gives the plain F.linear), then the
ratios that `--precision auto` (model_io/precision.py) and the packing rest on.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402

import model_io.linear as linear  # noqa: E402
from cli import out_of_memory  # noqa: E402
from grpo.flags import OneLineParser  # noqa: E402  (a usage error in one line, as in run.py)
from machine import ms_per_call  # noqa: E402
from model_io.precision import cpu_has_fast_bf16  # noqa: E402

# SmolLM2-135M's linears as model_io/model.py fuses them: qkv (576 -> 960), o (576 -> 576), gate_up (576 -> 3072),
# down (1536 -> 576), LM head (576 -> 49152)
DEFAULT_SHAPES = "576x960,576x576,576x3072,1536x576,576x49152"


def parse_ints(ap: argparse.ArgumentParser, flag: str, text: str, sep: str = ",") -> list[int]:
    try:
        vals = [int(v) for v in text.split(sep)]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1 or max(vals) >= 2**31:
        ap.error(f"{flag} takes whole numbers >= 1 and below 2**31, separated by '{sep}'; got {text!r}")
    return vals


def measure(k: int, n: int, rows: int, dtype: torch.dtype, packed: bool, reps: int) -> float | None:
    """ms per call of a k -> n Linear in `dtype` on `rows` rows; None where this CPU cannot pack `dtype`."""
    if packed and dtype == torch.bfloat16 and not linear.BF16_PACKED:
        return None
    torch.manual_seed(0)
    m = linear.Linear(k, n, bias=False).to(dtype)
    m.allow_packed = packed
    x = torch.randn(rows, k, dtype=dtype)
    with torch.no_grad():
        assert (m._packed_dtype(x) is not None) == packed, "the path measured is not the one asked for"
        return ms_per_call(lambda: m(x), reps)


def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated INxOUT linear shapes")
    ap.add_argument("--rows", default="1,8,32,64", help="comma-separated row counts (decode's live rows)")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per figure, after 2 warm-ups")
    a = ap.parse_args(argv)
    shapes = [parse_ints(ap, "--shapes", s, "x") for s in a.shapes.split(",")]
    if any(len(s) != 2 for s in shapes):
        ap.error(f"--shapes takes INxOUT pairs like 576x1536, comma-separated; got {a.shapes!r}")
    rows = parse_ints(ap, "--rows", a.rows)
    if not 1 <= a.reps < 2**31:
        ap.error(f"--reps must be {'>= 1' if a.reps < 1 else 'below 2**31'}, got {a.reps}")
    if not linear.ENABLED:
        ap.error("packed linears are off here (MCTS_GRPO_PACKED_LINEAR=0, or torch without oneDNN): nothing to compare")

    caps = {}
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # (older torch, or cpuinfo unavailable: the flags below then read False)
        pass
    print(f"machine: cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}; amx_bf16 {bool(caps.get('amx_bf16'))}, avx512_bf16 "
          f"{bool(caps.get('avx512_bf16'))}; oneDNN packs bf16: {linear.BF16_PACKED}; --precision auto here: "
          f"{'bf16' if cpu_has_fast_bf16() else 'fp32'}")
    print("ms per call (float32 plain / packed, bf16 plain / packed), then packed/plain for float32 and "
          "bf16-best/float32-best (< 1: bf16 is faster)")
    print(f"{'shape':>12s} {'rows':>5s} {'f32 plain':>10s} {'f32 packed':>11s} {'bf16 plain':>11s} {'bf16 packed':>12s} "
          f"{'f32 pack/plain':>15s} {'bf16/f32':>9s}")
    pack_ratios = []
    for k, n in shapes:
        for r in rows:
            with out_of_memory(ap, "--shapes or --rows"):  # a shape past the memory: one line naming the flags
                t = {(dt, p): measure(k, n, r, dt, p, a.reps) for dt in (torch.float32, torch.bfloat16) for p in (False, True)}
            f32, b16 = t[torch.float32, False], t[torch.bfloat16, False]
            f32p, b16p = t[torch.float32, True], t[torch.bfloat16, True]
            best32, best16 = min(f32, f32p), min(v for v in (b16, b16p) if v is not None)
            pack_ratios.append(f32p / f32)
            b16p_s = "n/a" if b16p is None else f"{b16p:.3f}"
            print(f"{f'{k}x{n}':>12s} {r:5d} {f32:10.3f} {f32p:11.3f} {b16:11.3f} {b16p_s:>12s} "
                  f"{f32p / f32:15.2f} {best16 / best32:9.2f}")
    print(f"float32 packed/plain over all rows and shapes: {min(pack_ratios):.2f} to {max(pack_ratios):.2f}")


if __name__ == "__main__":
    main()
