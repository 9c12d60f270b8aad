"""Step 1 of scripts/gpu_run.sh: the machine, and two measured rates: device copy bandwidth and bf16 matmul."""
import json
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))
from machine import copy_bandwidth  # noqa: E402


def main(out: str) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    info = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if dev.type == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__}
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
    info[f"matmul_tflops_{str(dt).removeprefix('torch.')}"] = round(2 * n**3 * 10 / (time.perf_counter() - t) / 1e12, 1)
    print(json.dumps(info))
    with open(out, "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
