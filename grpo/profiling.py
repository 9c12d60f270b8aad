"""`run.py train --profile-step N`: one training step under torch.profiler, written where a reader finds it.

A GRPO step of a small model on a GPU is launch-bound rather than compute-bound (an H200 step of the embedded
model spent ~2.4 s outside sampling for ~25 TFLOP of matmuls, docs/RESULTS.md), and the step's own metrics
(time/rollout, time/logprobs, time/update) say where the wall time goes but not why. The profile says why: how
long the device was busy within the step (its kernels' time against the wall time), how many kernels ran, and
which operations took the time, on the host and on the device, within the step's three phases (the
record_function ranges "grpo/rollout", "grpo/logprobs", "grpo/update" that Trainer.train_step opens).

Writes OUT/profile/step_N.txt (the summary line and two tables) and OUT/profile/step_N.trace.json.gz (a Chrome
trace: chrome://tracing or ui.perfetto.dev), on the main process only. The profiled step runs slower than the
others (the profiler records every operation); its metrics are logged as any step's. Kernels replayed from a
CUDA graph (the static decode path) are timed by CUPTI, whose times for them may be off (pytorch/kineto#1165).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("grpo/rollout", "grpo/logprobs", "grpo/update")


def phase(name: str):
    """A named range of a training step in the profile (cheap when no profiler runs)."""
    assert name in PHASES, name
    return record_function(name)


def prepare(device: torch.device) -> None:
    """Before any CUDA graph is made in a process that will profile: start and stop the profiler once. A graph made
    before the profiler's first start and replayed under it has hung or faulted (pytorch/pytorch#75504; the
    workaround torch.profiler._utils._init_for_cuda_graphs, pytorch#100441, is this)."""
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
            pass


@contextlib.contextmanager
def profiled(step: int, run_dir: Path, device: torch.device):
    """Profile the body (one training step, `step` counted from 1) and write its files under run_dir/profile."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    out = Path(run_dir) / "profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_{step}.txt").write_text(report(prof, wall, cuda, step))
    prof.export_chrome_trace(str(out / f"step_{step}.trace.json.gz"))  # (a name ending in .gz: gzipped)


def report(prof, wall: float, cuda: bool, step: int) -> str:
    """The summary line (wall time, device-busy time, kernel count, each phase's wall time) and the tables."""
    events = prof.events()
    phases = {e.name: e.cpu_time_total / 1e6 for e in events  # (one range each per step; on the host's clock)
              if e.name in PHASES and e.device_type == torch.autograd.DeviceType.CPU}
    split = ", ".join(f"{name.split('/')[1]} {phases[name]:.3f} s" for name in PHASES if name in phases)
    lines = [f"training step {step}: {wall:.3f} s wall under the profiler ({split})"]
    if cuda:
        # (not the device-side copies of record_function ranges, torch.profiler's gpu_user_annotation events: each
        # spans the kernels it launched, and counted as one it doubled the busy time; torch's own tables leave them
        # out too, pytorch/pytorch#130730)
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not getattr(e, "is_user_annotation", False)]
        busy = sum(e.device_time for e in kernels) / 1e6  # (microseconds; kernels of one stream do not overlap)
        lines.append(f"device busy {busy:.3f} s of {wall:.3f} s ({100 * busy / wall:.1f}%) in {len(kernels)} kernels "
                     f"({1e6 * busy / max(len(kernels), 1):.1f} us a kernel): the rest of the wall time the device "
                     "waited for the host (launches, Python, synchronisations)")
    avg = prof.key_averages()
    if cuda:
        lines += ["", "by device time (self):", avg.table(sort_by="self_device_time_total", row_limit=30)]
    lines += ["", "by host time (self):", avg.table(sort_by="self_cpu_time_total", row_limit=30)]
    return "\n".join(lines) + "\n"
