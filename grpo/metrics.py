"""Run logs: metrics.jsonl (one line per step), TensorBoard event files, samples.jsonl. Rank 0 writes; others no-op."""
from __future__ import annotations

import json
from pathlib import Path


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(str(run_dir / "tb"))
        self.metrics_path, self.samples_path = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:  # opened per step: a killed run loses no finished line
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with self.samples_path.open("a") as f:
            f.writelines(json.dumps({"step": step, **r}) + "\n" for r in rows)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            self.tb.add_text(tag, text, step)

    def purge_after(self, step: int) -> None:
        """On resume: TensorBoard drops the events of steps > `step` (they are about to be run again)."""
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.tb.log_dir
            self.tb.close()
            self.tb = SummaryWriter(log_dir, purge_step=step + 1)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()  # a later add_scalar reopens it


def truncate_log(path: Path, last_step: int) -> None:
    """On resume: drop lines of steps after the checkpoint (they will be run again), keeping the file consistent."""
    if not path.is_file():
        return
    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= last_step]
    path.write_text("".join(l + "\n" for l in keep))
