"""run.py train: run directories, train-time refusals, full disks and out of memory. Resume is in test_cli_resume.py."""
import dataclasses
import json
import os
import shutil

import pytest
import torch
from conftest import gsm8k_dir
from helpers import tiny_hf_model, tiny_run, tiny_tokenizer

import run
from grpo.checkpointing import checkpoint_dirs
from grpo.config import TrainConfig
from model_io import ModelSpecError, export_hf, save_model
from model_io.convert import from_hf_model


def test_train_run_dirs_that_cannot_go_on_say_so_and_a_finished_one_is_left_alone(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A run stopped before its first checkpoint is not offered --resume (which could not take it); resuming a
    finished run trains nothing and says where its model is; 'auto' and the data path beside --resume are no
    change; Ctrl-C is one line that says how to continue."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig())))  # what train writes first
    (early / "metrics.jsonl").write_text('{"step": 1}\n')
    capsys.readouterr()
    assert run.main(["train", "--resume", str(early)]) == 2
    assert (f"stopped before its first checkpoint, so there is nothing to resume: start it over with its train command "
            f"and --out-dir {early} (without --resume)") in capsys.readouterr().err
    # neither a model nor an eval's outputs is a run stopped early (which would tell the user to delete it)
    save_model(from_hf_model(tiny_hf_model("llama")), tiny_tokenizer(), tmp_path / "model")
    assert run.main(["train", "--resume", str(tmp_path / "model")]) == 2
    assert capsys.readouterr().err == (f"error: --resume {tmp_path / 'model'} is a model directory, not a training run: "
                                       f"train from it with --model {tmp_path / 'model'}\n")
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "config.json").write_text(json.dumps({"search": "greedy", "limit": 1}))
    (ev / "summary.json").write_text("{}")
    assert run.main(["train", "--resume", str(ev)]) == 2
    assert f"--resume {ev} is not a run directory of `run.py train`" in capsys.readouterr().err
    out = tmp_path / "run"
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--steps", "1", "--max-new-tokens", "4",
                     "--eval-every", "0", "--out-dir", str(out), "--device", "cpu"]) == 0
    final = (out / "final_hf" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out), "--precision", "auto", "--gsm8k", gsm8k_dir()]) == 0
    assert f"has finished (step 1 of 1): nothing to train; its model is {out / 'final_hf'}" in capsys.readouterr().out
    assert (out / "final_hf" / "model.safetensors").stat().st_mtime_ns == final
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    events = sorted((out / "tb").iterdir())
    assert run.main(["train", "--resume", str(out)]) == 0 and sorted((out / "tb").iterdir()) == events  # no empty event file
    # eval into a training run would replace its config.json and tb/; a config.json another command wrote is refused
    config = (out / "config.json").read_text()
    capsys.readouterr()
    assert run.main(["eval", "--out-dir", str(out), "--limit", "1"]) == 2
    assert "holds a training run" in capsys.readouterr().err and (out / "config.json").read_text() == config
    (out / "config.json").write_text(json.dumps({"search": "greedy", "limit": 1}))
    assert run.main(["train", "--resume", str(out)]) == 2
    assert "config.json is not the config of a `run.py train` run" in capsys.readouterr().err
    (out / "config.json").write_text(config)

    def ctrl_c(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "load_spec", ctrl_c)
    assert run.main(["train", "--resume", str(out), "--token-budget", "0"]) == 130
    assert capsys.readouterr().err == f"interrupted: `run.py train --resume {out}` continues from its last checkpoint\n"
    assert run.main(["train", "--out-dir", str(tmp_path / "new"), "--device", "cpu"]) == 130
    assert capsys.readouterr().err == ("interrupted: no checkpoint was written yet, so there is nothing to resume (the "
                                       "same command starts it again)\n")
    # ...and it does: a run stopped before its first checkpoint is started over in its directory, its files cleared
    # once every input has been checked (stopped at loading, as above: nothing cleared yet)
    (early / "tb").mkdir()
    (early / "samples.jsonl").write_text("{}\n")
    (early / "keep.txt").write_text("the user's")
    before = sorted(p.name for p in early.iterdir())
    assert run.main(["train", "--out-dir", str(early), "--device", "cpu"]) == 130
    assert sorted(p.name for p in early.iterdir()) == before
    monkeypatch.undo()
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    capsys.readouterr()
    assert run.main(["train", "--model", tiny_ckpt, "--steps", "1", "--prompts-per-step", "1", "--group-size", "2",
                     "--max-new-tokens", "4", "--eval-every", "0", "--out-dir", str(early), "--device", "cpu"]) == 0
    assert (f"{early} holds a run that stopped before its first checkpoint (nothing to resume): starting over there\n"
            in capsys.readouterr().err)
    assert (early / "keep.txt").is_file() and (early / "samples.jsonl").read_text() != "{}\n"
    assert [json.loads(l)["step"] for l in (early / "metrics.jsonl").read_text().splitlines()] == [1]
    shutil.rmtree(early / "checkpoints")  # (final_hf stays)
    # a finished run whose checkpoints are gone still holds its model: refused
    assert run.main(["train", "--out-dir", str(early), "--device", "cpu"]) == 2
    assert f"{early} holds a finished run's model (final_hf): pass another --out-dir" in capsys.readouterr().err

def test_train_cli_writes_a_complete_run_and_refuses_to_overwrite_it(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_ckpt, "--preset", "smoke", "--max-new-tokens", "8", "--eval-limit", "2",
            "--out-dir", str(out), "--device", "cpu"]
    assert run.main(argv) == 0
    assert "eval greedy: 100%" in capsys.readouterr().err  # the evaluation's own bar (the training bar stands still)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["steps"], cfg["group_size"], cfg["max_new_tokens"]) == (3, 4, 8)  # preset, and the flag over it
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 3] and "eval/accuracy_strict" in lines[-1]  # (the evaluation's own line)
    assert (out / "samples.jsonl").read_text().count("\n") == 3
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "step-000003" / "trainer_state.pt").is_file()
    assert json.loads((out / "checkpoints" / "step-000003" / "train_config.json").read_text())["steps"] == 3
    assert (out / "final_hf" / "model.safetensors").is_file()
    capsys.readouterr()
    assert run.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run.main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_training_run_directory_loads_its_newest_checkpoint_else_its_final_export(tmp_path, capsys, monkeypatch):
    """`--model runs/train` (run.py's load_spec; what a user tries first after training): the newest finished
    checkpoint's model, said on stderr; with the checkpoints deleted, final_hf; with neither yet, a one-line error."""
    old, new = from_hf_model(tiny_hf_model("llama", seed=1)), from_hf_model(tiny_hf_model("llama", seed=2))
    tok, rd = tiny_tokenizer(), tmp_path / "run"
    rd.mkdir()
    # a run in its first --save-every steps: its config and step logs, no checkpoints/ yet
    (rd / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig())))
    (rd / "metrics.jsonl").write_text('{"step": 1}\n')
    for made in ("metrics", "checkpoints"):
        if made == "checkpoints":
            (rd / "checkpoints").mkdir()
        with pytest.raises(ModelSpecError, match="training run with no finished checkpoint or final_hf yet") as e:
            run.load_spec(str(rd), torch.device("cpu"), torch.float32)
        assert "\n" not in str(e.value)
    for step, m in ((50, old), (100, new)):  # finished checkpoints: the model and the trainer state
        save_model(m, tok, rd / "checkpoints" / f"step-{step:06d}" / "model")
        (rd / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt").touch()
    save_model(old, tok, rd / "checkpoints" / "step-000150" / "model")  # (unfinished: no trainer state yet)
    export_hf(old, tok, rd / "final_hf")
    x = torch.randint(0, 259, (1, 6))
    m, _ = run.load_spec(str(rd), torch.device("cpu"), torch.float32)
    assert f"loading {rd / 'checkpoints' / 'step-000100' / 'model'}" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.equal(m(x), new(x))
    for d in (rd / "checkpoints").iterdir():
        for f in d.rglob("*"):
            if f.is_file():
                f.unlink()
    m, _ = run.load_spec(str(rd), torch.device("cpu"), torch.float32)
    assert f"loading {rd / 'final_hf'}" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.allclose(m(x), old(x), atol=1e-5)
    # a '~' (as `--model=~/run` passes it, unexpanded by the shell) is expanded, as load() expands it for models
    monkeypatch.setenv("HOME", str(tmp_path))
    run.load_spec("~/run", torch.device("cpu"), torch.float32)
    assert f"~/run is a training run: loading {rd / 'final_hf'}" in capsys.readouterr().err


def test_train_cli_with_tree_rollouts(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "tree"
    assert run.main(["train", "--model", tiny_ckpt, "--rollouts", "mcts", "--tree-advantage", "mix", "--steps", "2",
                     "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "4", "--mcts-step", "tokens:2",
                     "--eval-every", "0", "--token-budget", "10000", "--out-dir", str(out), "--device", "cpu"]) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["rollout/tree_groups"] for l in lines] == [1, 1] and lines[-1]["rollout/generated_tokens_total"] > 0


def test_train_refuses_bad_out_dirs_data_files_and_batches_before_loading(tmp_path, monkeypatch, capsys):
    """Checked before the data and the model load: an --out-dir that is a file, one GSM8K file where training and
    its evaluation need both splits, and (under torchrun) prompts that do not divide among the processes."""
    from grpo.distributed import Dist

    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before the inputs were checked"))
    (tmp_path / "afile").write_text("x")
    assert run.main(["train", "--out-dir", str(tmp_path / "afile"), "--device", "cpu"]) == 2
    assert "--out-dir" in capsys.readouterr().err
    test_file = f"{gsm8k_dir()}/test.jsonl"
    assert run.main(["train", "--gsm8k", test_file, "--out-dir", str(tmp_path / "r1"), "--device", "cpu"]) == 2
    assert "is one file, but the test and train splits are needed" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()  # made for the run, removed with its error
    assert run.main(["sample", "--gsm8k", test_file]) == 2
    assert "is one file" in capsys.readouterr().err
    # a run that never evaluates needs the train split alone: past the data, to the model (stopped there)
    monkeypatch.setattr(run, "load_spec", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run.main(["train", "--gsm8k", f"{gsm8k_dir()}/train.jsonl", "--eval-every", "0", "--out-dir", str(tmp_path / "r3"),
                     "--device", "cpu"]) == 130
    assert capsys.readouterr().err.startswith("interrupted: no checkpoint was written yet")
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before the inputs were checked"))
    monkeypatch.setattr(run.D, "init_from_env", lambda device: (Dist(rank=0, world=2), torch.device("cpu")))
    assert run.main(["train", "--prompts-per-step", "3", "--gsm8k", gsm8k_dir(), "--out-dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --prompts-per-step 3 must be a multiple of the 2 processes\n"
    assert not (tmp_path / "r2" / "config.json").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_that_says_how_to_go_on(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """torch.save fails on a full disk with a cryptic RuntimeError and a traceback: now one line naming the
    checkpoint, nothing half-written, and the command that continues from the last checkpoint written."""
    import shutil
    from collections import namedtuple

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):  # the second checkpoint's trainer state meets a full disk
        saves.append(f)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(1 << 40, 1 << 40, 0))
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--steps", "3", "--save-every", "1",
                     "--max-new-tokens", "4", "--eval-every", "0", "--out-dir", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    # said before the first step: 3 checkpoints at once (--keep-checkpoints 2, and the one being written)
    assert f"note: {out} has 0 B free, but this run's checkpoints need " in err and "(3 of " in err
    assert err.splitlines()[-1] == (
        f"error: no space left on the disk of {out / 'checkpoints' / 'step-000002'} (0 MiB free when the write failed; "
        f"nothing was left half-written): free space there; `run.py train --resume {out}` continues from its last "
        f"checkpoint")
    assert [d.name for d in (out / "checkpoints").iterdir()] == ["step-000001"]  # no temp copy beside it
    monkeypatch.undo()
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(["train", "--resume", str(out)]) == 0 and (out / "final_hf").is_dir()


def test_out_of_memory_is_one_line_naming_the_flags_that_use_less(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A GPU's OutOfMemoryError is a paragraph in a traceback, the CPU allocator's a RuntimeError: each is one line
    with what was asked for, the flags that lower it and, for a run with a checkpoint, how to continue."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--steps", "2", "--save-every", "1",
                     "--max-new-tokens", "2", "--eval-every", "0", "--out-dir", str(out), "--device", "cpu"]) == 0
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                                 "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.1 GiB in use.")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)")
    for err, what in ((gpu, "CUDA out of memory. Tried to allocate 2.00 GiB"),
                      (cpu, "can't allocate memory: you tried to allocate 40000000000000 bytes")):
        def oom(*a, err=err):
            raise err

        monkeypatch.setattr(run, "load_spec", oom)
        capsys.readouterr()
        assert run.main(["train", "--resume", str(out), "--max-minutes", "9"]) == 2
        assert capsys.readouterr().err == (
            f"error: out of memory ({what}): lower --micro-batch (completions per forward/backward) or --logprob-chunk, or "
            f"--prompts-per-step x --group-size (the completions sampled at once, per process), or tree search's "
            f"--mcts-simulations x --mcts-children; `run.py train --resume {out}` "
            f"continues from its last checkpoint\n")
        assert run.main(["eval", "--limit", "1", "--out-dir", str(tmp_path / "ev")]) == 2
        assert capsys.readouterr().err == (f"error: out of memory ({what}): lower --batch-size (questions at once; each with "
                                           f"--n answers, or tree search's --children rows and --n-simulations x --children "
                                           f"nodes)\n")
        assert not (tmp_path / "ev").exists()
    monkeypatch.setattr(run, "load_spec", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError keeps its traceback
        run.main(["eval", "--limit", "1", "--out-dir", str(tmp_path / "ev")])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), whose every write fails with ENOSPC")
@pytest.mark.parametrize("log", ["samples.jsonl", "metrics.jsonl"])
def test_a_full_disk_under_the_step_logs_names_the_file(log, tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Seen on a full 8 MB tmpfs: a failed write() or close() has no filename, and the run's one line said only
    "error: No space left on device"; now it names the log it was writing."""
    from pathlib import Path

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    real = Path.open
    # the log's writes go to /dev/full (a symlink put there beforehand is, rightly, a file train did not write)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: real(Path("/dev/full") if self == out / log else self, *a, **k))
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--max-new-tokens", "4", "--eval-every", "0",
                     "--out-dir", str(out), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: No space left on device: {out / log}; no checkpoint was written yet, so there is nothing to resume "
        "(the same command starts it again)")


def test_a_full_disk_under_tensorboard_is_one_line_naming_its_directory(tiny_ckpt, tmp_path, monkeypatch, capfd):
    """Seen on a full tmpfs: TensorBoard's writer thread printed a 16-line traceback, then the next event raised
    its error again in the main thread, with no filename. Now one line naming tb/, no traceback."""
    import errno

    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    out = tmp_path / "run"
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--max-new-tokens", "4", "--eval-every", "0",
                     "--out-dir", str(out), "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"error: No space left on device: {out / 'tb'}; no checkpoint was written yet, so "
                                    "there is nothing to resume (the same command starts it again)")


def test_the_cpu_estimate_says_the_whole_runs_time_too():
    cfg = TrainConfig()  # 500 steps of 8 prompts x 8 completions
    assert run.step_estimate(300.0, cfg, 0, 1) == (
        "estimated time per step on this CPU: about 300 s or less (1 process(es), 8 prompts x 8 completions, up to 256 "
        "tokens); the 500 steps to go: about 41.7 hours or less, evaluations aside")
    resumed = dataclasses.replace(cfg, steps=3, max_minutes=2.5)  # 2 steps of 100 s left: 3.3 minutes, past --max-minutes
    assert run.step_estimate(100.0, resumed, 1, 2).endswith(
        "the 2 steps to go: about 3 minutes or less, evaluations aside; --max-minutes 2.5 stops it sooner")
    tiny = dataclasses.replace(cfg, steps=50)  # a tiny model's steps: not "about 0 s", "about 0 minutes"
    assert run.step_estimate(0.2, tiny, 0, 2).startswith("estimated time per step on this CPU: under a second (2 process(es)")
    for per_step in (0.5, 0.7):  # (0.5 s is not "about 0 s": rounding half to even)
        assert run.step_estimate(per_step, tiny, 0, 2).startswith("estimated time per step on this CPU: about 1 s or less (2 process(es)")
    assert run.step_estimate(0.2, tiny, 0, 2).endswith("the 50 steps to go: under a minute, evaluations aside")
    assert "to go: about 1 minute or less" in run.step_estimate(1.2, tiny, 0, 1)  # 60 s
    roomy = dataclasses.replace(cfg, steps=3, max_minutes=60)  # 3 steps of 100 s: within the hour, said of nothing
    assert run.step_estimate(100.0, roomy, 0, 1).endswith("the 3 steps to go: about 5 minutes or less, evaluations aside")


def test_more_prompts_per_step_than_training_problems_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """A small --gsm8k file: 5 train problems, 2 of them the prompt's worked examples, 3 left for a step's 8
    prompts (grpo/batches.py split_shots). Refused before anything loads, the out-dir it made removed."""
    from pathlib import Path

    real = Path(gsm8k_dir())
    small = tmp_path / "gsm8k"
    small.mkdir()
    (small / "train.jsonl").write_text("".join(real.joinpath("train.jsonl").read_text().splitlines(True)[:5]))
    (small / "test.jsonl").write_text("".join(real.joinpath("test.jsonl").read_text().splitlines(True)[:3]))
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before the refusal"))
    out = tmp_path / "run"
    assert run.main(["train", "--gsm8k", str(small), "--out-dir", str(out), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == ("error: --prompts-per-step 8 is more than the 3 training problems (after the --shots "
                                       "examples): a step would ask some twice, whose groups sample the same completions; "
                                       "lower --prompts-per-step to at most 3\n")
    assert not out.exists()


def test_train_clears_only_what_a_train_began_and_removes_a_killed_writers_leftovers(tmp_path, monkeypatch, capsys):
    """A CLI audit: training into a directory holding a checkpoints/ folder of another program's (or a metrics.jsonl)
    took it for a run stopped before its first checkpoint and deleted it; a directory inside a run's checkpoints/
    was taken as --out-dir (its run's rotation deletes it); and a checkpoint half-written when `kill -9` came stayed
    on disk for good (1.6 GB each for the default model), unseen by rotation and the disk note."""
    _, out = tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
    base = tmp_path / "base"
    tiny = ["train", "--model", str(base), "--steps", "1", "--prompts-per-step", "1", "--group-size", "2",
            "--max-new-tokens", "2", "--eval-every", "0", "--device", "cpu"]
    proj = tmp_path / "proj"
    files = {"checkpoints/best.ckpt": "weights", "config.json": '{"lr": 0.1}'}
    for f, text in files.items():
        (proj / f).parent.mkdir(parents=True, exist_ok=True)
        (proj / f).write_text(text)
    capsys.readouterr()
    assert run.main(tiny + ["--out-dir", str(proj)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out-dir {proj} holds config.json, checkpoints, not written by `run.py train`") and err.count("\n") == 1
    assert {f: (proj / f).read_text() for f in files} == files
    for inner in (out / "checkpoints" / "step-000001", out / "checkpoints", out / "tb" / "x"):
        assert run.main(tiny + ["--out-dir", str(inner)]) == 2
        assert f"is inside the training run {out}," in capsys.readouterr().err
    assert run.main(["eval", "--model", str(base), "--limit", "1", "--out-dir", str(out / "checkpoints" / "ev")]) == 2
    err = capsys.readouterr().err  # (it said "a directory outside it", then named one inside the run: a README walk)
    assert f"is inside the training run {out}," in err and not (out / "checkpoints" / "ev").exists()
    assert err.endswith(f"pass a directory outside its checkpoints/, tb/ and final_hf/ (e.g. {out / 'eval'})\n")
    left = out / "checkpoints" / ".step-000002.tmp-x1y2"  # as atomic_dir names its temporary directory
    (left / "model").mkdir(parents=True)
    (left / "model" / "model.safetensors").write_bytes(b"\0" * 5000)
    assert run.main(["train", "--resume", str(out)]) == 0
    assert f"note: removed 1 half-written checkpoint (5 kB) that a killed run left in {out}" in capsys.readouterr().err
    assert not left.exists() and [p.name for p in checkpoint_dirs(out)] == ["step-000001", "step-000002"]


def test_a_log_replaced_by_a_directory_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """metrics.jsonl or samples.jsonl replaced by a directory, or tb/ by a file: a traceback after a step had run."""
    _, out = tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
    for name, make in (("metrics.jsonl", "mkdir"), ("tb", "file")):
        path = out / name
        moved = path.with_name(name + ".real")
        path.rename(moved)
        path.mkdir() if make == "mkdir" else path.write_text("x")
        capsys.readouterr()
        assert run.main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path} is a {'directory' if make == 'mkdir' else 'file'}, where train keeps its ")
        assert err.count("\n") == 1 and len(checkpoint_dirs(out)) == 1
        path.rmdir() if make == "mkdir" else path.unlink()
        moved.rename(path)
    assert run.main(["train", "--resume", str(out)]) == 0
