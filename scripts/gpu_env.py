"""Step 1 of scripts/gpu_run.sh: the machine, and two measured rates: device copy bandwidth and bf16 matmul
(float32 on a CPU), after the first attention calls (timed: first_calls). Prints them as JSON and writes them to
OUT. Also what torch.compile needs beyond torch: a C compiler and Triton (without them `--decode compiled` fails,
and its figures are missing for that reason).

    python3 scripts/gpu_env.py OUT_DIR/env.json
"""
import argparse
import datetime
import json
import importlib.metadata
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))
from machine import copy_bandwidth  # noqa: E402


def significant(x: float, digits: int = 3) -> float:
    """x rounded to `digits` significant figures: a fixed number of decimals printed a CPU's 0.04 TFLOP/s as 0.0."""
    return round(x, digits - 1 - math.floor(math.log10(abs(x)))) if x else 0.0


def toolchain() -> dict:
    """The C compiler torch.compile would find (inductor's CPU code, Triton's launchers), and Triton's version."""
    cc = next((shutil.which(c) for c in ("cc", "gcc", "g++", "clang") if shutil.which(c)), None)
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"c_compiler": cc, "triton": triton}


def first_calls(dev: torch.device) -> dict:
    """Seconds of the first masked bf16 attention calls (a decode step's shape, and a training pass's with its
    backward): on a fresh machine the first process to make them loads the attention libraries (cuDNN and others,
    GBs on disk). On the first H200 run the sampler step, the first to decode, printed nothing in 110 s, while the
    same benchmark rerun at once finished in 61 s; made here, in the step without a time limit, those loads are
    paid (and shown) before the timed steps."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    out = {}
    for name, (T, grad) in {"first_attention_decode_s": (1, False), "first_attention_train_s": (64, True)}.items():
        q = torch.randn(8, 3, 3 * T, 64, device=dev, dtype=dt, requires_grad=grad)  # 9 query heads on 3 kv heads
        k, v = (torch.randn(8, 3, 128, 64, device=dev, dtype=dt) for _ in range(2))
        mask = torch.zeros(8, 1, 3 * T if T > 1 else 1, 128, device=dev, dtype=dt)
        t = time.perf_counter()
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if grad:
            y.sum().backward()
        sync()
        out[name] = significant(time.perf_counter() - t)
    return out


def measure(out: str) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),  # (the summary's date)
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if dev.type == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__, **toolchain()}
    info.update(first_calls(dev))
    copied = copy_bandwidth(dev, reps=10)
    info["copy_gb_per_s"] = round(copied / 1e9, 1)  # bytes copied per second: bench/sampler.py's floor divides by it
    info["memory_traffic_gb_per_s"] = round(2 * copied / 1e9, 1)  # each copied byte is read and written
    n = 8192 if dev.type == "cuda" else 1024
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    a @ b
    sync(); t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    info[f"matmul_tflops_{str(dt).removeprefix('torch.')}"] = significant(2 * n**3 * 10 / (time.perf_counter() - t) / 1e12)
    print(json.dumps(info))
    with open(out, "w") as f:
        json.dump(info, f, indent=2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", metavar="OUT", help="JSON file to write (its directory must exist)")
    a = ap.parse_args(argv)
    if not a.out.strip() or Path(a.out).is_dir():  # (refused now, not after the measurement)
        ap.error(f"OUT {a.out!r} is {'empty' if not a.out.strip() else 'a directory'}: give the JSON file to write")
    if not Path(a.out).resolve().parent.is_dir():
        ap.error(f"no directory {Path(a.out).parent} for {a.out}: create it first")
    measure(a.out)


if __name__ == "__main__":
    main()
