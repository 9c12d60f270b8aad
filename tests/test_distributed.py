"""Two gloo processes under torchrun take the same steps as one process with the same global batch."""
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import pytest
from helpers import make_trainer
from safetensors.torch import load_file

import grpo.distributed as D

CASES = {
    "plain": dict(beta=0.04, steps=2),
    # half the prompts on the tree, batch-std advantages: the std must be over both kinds of rows on both ranks
    "tree-batch-std": dict(beta=0.04, steps=1, rollouts="mcts", mcts_prob=0.5, adv_scale="batch", mcts_step="tokens:2",
                           mcts_children=4),
}


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one(tmp_path, case):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    worker = Path(__file__).with_name("ddp_worker.py")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        str(worker), str(tmp_path), json.dumps(CASES[case])], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    single = make_trainer(tmp_path / "single", dtype=torch.float64, **CASES[case])
    last = single.train()
    init = make_trainer(tmp_path / "init", dtype=torch.float64).model
    for (n, p1), (_, p0) in zip(single.model.named_parameters(), init.named_parameters()):
        # log-probs are float32 (even for this float64 model), and micro-batches split differently: updates of
        # ~3e-3 per step agree to float32 rounding
        assert torch.allclose(ddp[n], p1, atol=1e-6), (n, (ddp[n] - p1).abs().max().item())
        assert not torch.allclose(p1, p0), n  # the steps did move the weights
    got = json.loads((tmp_path / "metrics.json").read_text())
    # metrics reduced over ranks; and the gradient's norm after the all-reduce, which the weights cannot check:
    # AdamW's update (and clipping) is the same for a gradient scaled by any factor, so gradients summed over ranks
    # instead of averaged (2x) would pass the comparison above (a review's replay of this test showed it)
    for k in ("reward", "loss", "kl", "entropy", "grad_norm"):
        assert abs(got[k] - last[k]) < 1e-6 * max(1.0, abs(last[k])), (k, got[k], last[k])


def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    """Rank 1's loss is NaN but its gradient finite (a NaN added to the loss): the averaged gradient is finite on
    both ranks, and had each rank judged its own loss, rank 0 would have stepped and rank 1 not, their weights
    parting for the rest of the run. Both skip: rank 0 ends where it started."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    worker = Path(__file__).with_name("ddp_worker.py")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(worker),
                        str(tmp_path), json.dumps(dict(beta=0.04, steps=1, nan_loss_on_rank=1))],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "update skipped" in p.stdout + p.stderr
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    init = make_trainer(tmp_path / "init", dtype=torch.float64).model
    for n, p0 in init.named_parameters():
        assert torch.equal(ddp[n], p0), n


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
def test_leaving_the_group_joins_its_gloo_threads(tmp_path):
    """A group kept alive past destroy_process_group (by torch._dynamo imported after it formed) left its gloo
    threads running into the interpreter's finalisation, where releasing a collective's tensor needs the GIL:
    SIGABRT at exit, 'terminate called without an active exception', in ~1 two-process run in 7 of the test
    above. Every gloo thread must be gone once the group is left."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    worker = Path(__file__).with_name("gloo_exit_worker.py")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(worker)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # (the two ranks share one pipe: a line's text and its newline may reach it apart, so match, do not split lines)
    found = sorted(re.findall(r"rank (\d) threads before (\d+) after (\d+) sum (\[[^]]*\]) left (\[[^]]*\])", p.stdout))
    assert [r for r, *_ in found] == ["0", "1"], p.stdout
    for rank, before, after, total, left in found:  # threads: as before init (else the names of those left)
        assert before == after and total == "[2.0, 2.0, 2.0]", (rank, before, after, total, left)


def test_a_cuda_device_the_machine_lacks_is_one_line(monkeypatch):
    """--device cuda:2 on a one-GPU machine, or torchrun with more processes than GPUs: one line naming what the
    machine has, before anything loads (torch would fail later, inside set_device or the first tensor move)."""
    import torch

    import run
    from grpo.distributed import init_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match=r"^--device cuda:2 asks for cuda:2, but this machine has 1 CUDA device "
                                         r"\(only cuda:0\): pick one of them$"):
        init_from_env("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^--device cuda:2 asks for cuda:2, but this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        init_from_env("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="--device cuda:1 asks for cuda:1"):
        run.resolve_device("cuda:1")
    assert run.resolve_device("cuda:0") == torch.device("cuda:0")
    monkeypatch.setenv("RANK", "3"), monkeypatch.setenv("WORLD_SIZE", "4"), monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match="LOCAL_RANK 3 asks for cuda:3, .* has 1 CUDA device .*lower --nproc_per_node"):
        init_from_env("auto")


def test_under_torchrun_an_error_every_rank_meets_is_printed_once(monkeypatch, capsys):
    """A bad flag (or data, or model) fails on every rank alike: rank 0 prints it and the others exit quietly with
    the same status; an error of one rank's own GPU is printed by that rank."""
    import torch

    import run

    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert run.main(["train", "--group-size", "0"]) == 2
        assert ("error: --group-size" in capsys.readouterr().err) == shown, rank
        with pytest.raises(SystemExit) as e:
            run.main(["train", "--no-such-flag"])
        assert e.value.code == 2 and ("unrecognized arguments" in capsys.readouterr().err) == shown, rank
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(run.D.RankError, match="LOCAL_RANK 1 asks for cuda:1"):
        run.D.init_from_env("auto")
    assert run.D.reports(run.D.RankError("x")) and not run.D.reports(ValueError("x"))


def test_device_cuda_under_torchrun_joins_on_the_local_gpu(monkeypatch):
    """`torchrun --nproc_per_node 1 run.py train --device cuda`: torch.cuda.set_device refuses a device without an
    index (ValueError 'Expected a torch.device with a specified index'), so the local GPU is named."""
    import torch
    import torch.distributed as dist
    from torch.cuda._utils import _get_device_index

    from grpo.distributed import init_from_env

    set_to, backends = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: set_to.append(_get_device_index(dev)))  # torch's check
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "1"), monkeypatch.setenv("LOCAL_RANK", "0")
    kws = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: backends.append(backend) or kws.append(kw))
    _, device = init_from_env("cuda")
    assert device == torch.device("cuda:0") and set_to == [0] and backends == ["nccl"]
    # rank 0 alone evaluates while the others wait in a barrier: minutes, past NCCL's default 10-minute timeout
    assert kws[0]["timeout"] >= datetime.timedelta(minutes=60)
    # two processes: each on its own local GPU, whichever --device cuda:N was given to all
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    d, device = init_from_env("cuda:0")
    assert device == torch.device("cuda:1") and set_to == [0, 1] and (d.rank, d.world, d.local_rank) == (1, 2, 1)


def test_each_process_takes_its_contiguous_share_of_the_batch():
    from grpo.distributed import Dist, shard

    assert [shard(list(range(8)), Dist(rank=r, world=4)) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard([5, 6, 7], Dist()) == [5, 6, 7]
    with pytest.raises(ValueError, match=r"^--prompts-per-step 6 must be a multiple of the 4 processes$"):
        shard(list(range(6)), Dist(rank=0, world=4))


def test_a_run_that_ended_well_meets_every_rank_before_leaving(tmp_path, monkeypatch):
    """Ranks leave the group together after a good run (one leaving early sometimes died at exit with SIGABRT and
    torchrun failed the run), but never wait after an error, when others may be stuck in a collective."""
    import torch.distributed as dist

    import run
    from grpo import distributed as D

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: seen.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: seen.append("destroy"))
    D.shutdown(D.Dist(group=True), wait=True)
    D.shutdown(D.Dist(group=True))
    assert seen == ["barrier", "destroy", "destroy"]

    waits = []
    monkeypatch.setattr(run.D, "shutdown", lambda d, wait=False: waits.append(wait))
    monkeypatch.setattr(run, "_train_in_group", lambda *a: {"reward": 1.0})
    assert run.cmd_train(run.TrainConfig(out_dir=str(tmp_path / "a"))) == {"reward": 1.0} and waits == [True]

    def fails(*a):
        raise ValueError("a rank failed")

    monkeypatch.setattr(run, "_train_in_group", fails)
    with pytest.raises(ValueError, match="a rank failed"):
        run.cmd_train(run.TrainConfig(out_dir=str(tmp_path / "b")))
    assert waits == [True, False]


def test_a_silent_rank_waits_for_rank_0_to_say_the_error(monkeypatch):
    """torchrun stops every worker once one exits with an error: rank 1 exiting first (silent) sometimes got rank 0
    stopped before its line, and the user saw no error at all (a torchrun fuzz: 1 time in 13)."""
    waits = []
    monkeypatch.setattr(D.time, "sleep", waits.append)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def usage_error():
        raise SystemExit(2)  # (argparse's error)

    for rank, main, code, waited in (("1", usage_error, 2, [D.SILENT_RANK_WAIT_S]), ("1", lambda: 2, 2, [D.SILENT_RANK_WAIT_S]),
                                     ("0", lambda: 2, 2, []), ("1", lambda: 0, 0, []), ("1", lambda: 143, 143, [])):
        waits.clear()
        monkeypatch.setenv("RANK", rank)
        assert D.exit_code(main) == code and waits == waited, (rank, code)
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone: nobody to wait for
    assert D.exit_code(lambda: 2) == 2 and waits == []
