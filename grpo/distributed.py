"""torch.distributed in the few places training needs it: set-up from torchrun's environment, the prompt shard
of each rank, gradient averaging, and gathering small tensors for metrics.

One process per GPU (NCCL), or processes on a CPU (gloo). Without torchrun everything here is a no-op.
"""
from __future__ import annotations

import datetime
import importlib
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # a process group is initialised (under torchrun, even with one process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.group


class RankError(ValueError):
    """An error only some processes of a torchrun job meet (their own GPU): each that meets it reports it, while
    errors every rank meets alike (a flag, the data, the model) are reported by rank 0 alone (`reports`)."""


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when alone), known before the process group forms."""
    return int(os.environ.get("RANK", "0"))


def reports(e: BaseException | None = None) -> bool:
    """Whether this process prints error `e` (None: a usage error): always when alone; under torchrun on rank 0, or on
    the rank a RankError is about."""
    return isinstance(e, RankError) or launch_rank() == 0


# How long a rank that fails in silence waits before it exits (exit_code): torchrun stops every worker once one exits
# with an error, and rank 0, meeting the same error a moment later, was stopped before it had printed its line.
SILENT_RANK_WAIT_S = 5.0


def exit_code(main) -> int | str | None:
    """main()'s exit code (a usage error's SystemExit too). Under torchrun, a rank other than 0 that ends with an
    error (2) it did not print (reports) first gives rank 0 SILENT_RANK_WAIT_S to say it: a bad flag ended, 1 time in
    13, with no line at all, only torchrun's ChildFailedError (a torchrun fuzz)."""
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    if code == 2 and launch_rank() != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # (2: an error; a stop by a
        # signal, 130 or 143, stops every rank at once, and waiting would only hold the stop up)
        time.sleep(SILENT_RANK_WAIT_S)
    return code


def check_device(name: str) -> str:
    """A --device value: cpu, cuda, cuda:N or auto (a one-line error otherwise, before anything loads)."""
    if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit())):
        raise ValueError(f"unknown --device {name!r}: use cpu, cuda, cuda:N or auto")
    return name


def check_cuda_index(device: torch.device, who: str, fix: str = "") -> None:
    """A CUDA device this machine has, or one line saying which it has (torch would fail later, deep inside)."""
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= n:
        has = f"cuda:0 to cuda:{n - 1}" if n > 1 else "only cuda:0" if n == 1 else "none"
        raise ValueError(f"{who} asks for cuda:{device.index}, but this machine has {n} CUDA device{'s' * (n != 1)} "
                         f"({has}): {fix or 'pick one of them'}")


def init_from_env(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set): join the process group, NCCL on CUDA, gloo on CPU. One process under
    torchrun still forms a group, so `torchrun --nproc_per_node 1` checks that NCCL initialises and trains."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launch_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if check_device(device_pref) == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_pref)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device_pref} asked for but CUDA is not available here: use --device cpu")
        if device.type == "cuda" and world > 1:
            device = torch.device(f"cuda:{local}")
    try:
        check_cuda_index(device, f"--device {device_pref}" if device_pref != "auto" and world == 1 else
                         f"torchrun's process with LOCAL_RANK {local}", "lower --nproc_per_node" if world > 1 else "")
    except ValueError as e:
        raise (RankError(str(e)) if world > 1 else e) from None
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            if device.index is None:  # `--device cuda` under torchrun: the local GPU (set_device refuses no index)
                device = torch.device(f"cuda:{local}")
            torch.cuda.set_device(device)
        # torch._dynamo imported after the group exists (AdamW's fused step, use_deterministic_algorithms and
        # torch.compile all import it) keeps references to the group that destroy_process_group does not drop:
        # the group then outlives it, and its gloo threads, still releasing the last collectives' tensors, met
        # the interpreter's finalisation: SIGABRT at exit ("terminate called without an active exception") in
        # about 1 two-process run in 7 here. Imported first, the group is freed and its threads joined at shutdown.
        importlib.import_module("torch._dynamo")
        # rank 0 alone evaluates and writes checkpoints while the others wait at a barrier: a 500-question
        # evaluation can outlast NCCL's default 10-minute collective timeout, so allow an hour
        # (device_id on CUDA: the group's GPU named, not guessed from the current device at each barrier, which
        # warned on every barrier in a 1-process NCCL run on an H200)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=60),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return Dist(rank, world, local, group=dist.is_initialized()), device


def shard(items: list, d: Dist) -> list:
    """This rank's contiguous share of a global batch (the batch size must divide by the world size)."""
    if len(items) % d.world:
        raise ValueError(f"--prompts-per-step {len(items)} must be a multiple of the {d.world} processes")
    k = len(items) // d.world
    return items[d.rank * k : (d.rank + 1) * k]


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.on:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def average_gradients(params, d: Dist) -> None:
    """Average .grad over ranks: what DistributedDataParallel's reducer does, after the local accumulation."""
    if not d.on:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= d.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_cat(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0 (rank order)."""
    if not d.on:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def shutdown(d: Dist, wait: bool = False) -> None:
    """Leave the process group. `wait` (a run that ended well on every rank): meet the other ranks first, so that
    none tears the group down while another may still use it. Not on an error path: a rank that raised must not
    wait for ranks stuck in a collective it will never join (torchtitan's rule too). The group's threads are
    joined here (see init_from_env's import), so none is left to meet the interpreter's finalisation."""
    if d.on and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
