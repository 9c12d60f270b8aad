"""Run under torchrun by test_distributed.py: does leaving the group join its gloo threads, even when
torch._dynamo is first imported after the group formed (as AdamW's fused step and deterministic mode do)?"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from grpo import distributed as D  # noqa: E402


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


if __name__ == "__main__":
    before = threads()
    d, _ = D.init_from_env("cpu")
    torch.use_deterministic_algorithms(True, warn_only=True)  # imports torch._dynamo, as the trainer does
    x = torch.ones(3)
    D.all_reduce_sum(x, d)
    D.shutdown(d, wait=True)
    print(f"rank {d.rank} threads before {before} after {threads()} sum {x.tolist()}", flush=True)
