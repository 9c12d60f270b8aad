"""The machine's measured copy bandwidth, for the floors and the context of the benchmarks.

The figure is bytes copied per second: every byte is read once and written once, so the memory traffic is twice
it, and a read-only stream (the weights of a decode step) may run up to 2x faster than a copy.

A shared machine's speed varies from hour to hour: this project's 2-core CPU has measured 31 GB/s of copy
bandwidth on one day and 10-12 GB/s on another, and a memory-bound side of a benchmark (decoding a few rows)
slows more than a compute-bound one. A ratio measured side by side holds for the conditions of its run, so the
benchmarks print the bandwidth they ran at beside it.

    python3 bench/machine.py          # prints the copy bandwidth of the default device
"""
from __future__ import annotations

import argparse
import time

import torch


def copy_bandwidth(dev: torch.device, reps: int = 5) -> float:
    """Bytes copied per second from one device buffer to another (each byte read once and written once), on a
    buffer larger than the caches: 512 MiB on a GPU, 256 MiB on a CPU."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # dev: need not be current
    buf = torch.empty((512 if dev.type == "cuda" else 256) * 2**20, dtype=torch.uint8, device=dev)
    out = torch.empty_like(buf)
    out.copy_(buf)  # warm-up: first touch of the pages
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        out.copy_(buf)
    sync()
    return buf.numel() * reps / (time.perf_counter() - t0)


def ms_per_call(fn, reps: int, dev: torch.device | str = "cpu", warmup: int = 2) -> float:
    """Milliseconds per call of `fn`, averaged over `reps` calls after `warmup` untimed ones (first-use costs: a
    packed weight, a kernel choice); on a GPU the device is synchronised before the clock starts and stops."""
    dev = torch.device(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"machine: {name}; copy bandwidth {copy_bandwidth(dev) / 1e9:.1f} GB/s")
