"""Run under torchrun by test_distributed.py: steps of the synthetic GRPO task with the trainer overrides given
as JSON, then rank 0 saves the weights and the last metrics."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from helpers import make_trainer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from grpo import distributed as D  # noqa: E402

if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    d, device = D.init_from_env("cpu")
    if overrides.pop("nan_loss_on_rank", None) == d.rank:  # this rank's loss alone non-finite, its gradient not
        import grpo.trainer as T

        real = T.policy_loss
        T.policy_loss = lambda *a, **k: (lambda loss, st: (loss + float("nan"), st))(*real(*a, **k))
    tr = make_trainer(out / f"run{d.rank}", dtype=torch.float64, dist=d, **overrides)
    last = tr.train()
    if d.main:
        save_file({n: p.detach().contiguous() for n, p in tr.model.named_parameters()}, str(out / "ddp.safetensors"))
        (out / "metrics.json").write_text(json.dumps(last))
    D.shutdown(d, wait=True)  # as run.py train ends a run that went well
