"""run.py train --resume: the flags it takes and refuses, the run directory it writes to, and what it names or restores
when the base model, the trainer state, the run config, the export or the final evaluation was changed, damaged or
cut short."""
import json
import shutil

import pytest
import torch
from conftest import gsm8k_dir
from helpers import tiny_hf_model, tiny_run, tiny_tokenizer

import run
from grpo.checkpointing import checkpoint_dirs
from model_io import load_model, save_model
from model_io.convert import from_hf_model


def test_resume_takes_limits_and_logging_flags_and_refuses_the_rest(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Beside --resume, a flag that does not change a training step (here: the token budget that stopped the run)
    is taken and written to config.json; one that would (the learning rate) is a one-line error that names it and
    leaves the run untouched; repeating a saved value is no change."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--max-new-tokens", "8", "--eval-every", "0",
                     "--token-budget", "1", "--out-dir", str(out), "--device", "cpu"]) == 0
    steps = lambda: [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps() == [1]  # the budget stopped it after one step
    before = (out / "config.json").read_text()
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out), "--lr", "0.1", "--token-budget", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr (the run has 1e-05) would change the training itself" in err
    assert "--model" in err and "--token-budget" in err  # the way out, and what may change
    assert (out / "config.json").read_text() == before and steps() == [1]
    # a flag that may change, past what the run allows: its own message, as a new run gives it (a review: it was
    # "its config.json holds a config that cannot run ...: restore it", blaming a file that was fine)
    assert run.main(["train", "--resume", str(out), "--profile-step", "9"]) == 2
    assert capsys.readouterr().err == "error: --profile-step 9 is past the run's last step (--steps 3)\n"
    # the sampling path may change (a run begun with --decode auto on a CPU, resumed on a GPU whose CUDA graphs
    # fail, or to compile the step): the same distribution, its arithmetic in another order
    assert run.main(["train", "--resume", str(out), "--token-budget", "0", "--lr", "1e-05", "--seed", "0",
                     "--decode", "static"]) == 0
    assert "resumed" in capsys.readouterr().out and steps() == [1, 2, 3]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decode"] == "static" and cfg["token_budget"] == 0 and cfg["resume"] == str(out) and cfg["steps"] == 3
    # the run's --model written another way (a trailing slash) is no change
    assert run.main(["train", "--resume", str(out), "--model", tiny_ckpt + "/"]) == 0
    assert "has finished" in capsys.readouterr().out
    # the error's way out: the run directory is a model spec (its newest checkpoint), a new run starts from it
    assert f"--model {out} --out-dir NEW_DIR" in err
    assert run.main(["train", "--model", str(out), "--preset", "smoke",
                     "--lr", "0.1", "--steps", "1", "--max-new-tokens", "4", "--eval-every", "0",
                     "--out-dir", str(tmp_path / "new"), "--device", "cpu"]) == 0


def test_resume_takes_its_own_directory_as_out_dir_and_names_another(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """--out-dir beside --resume naming the run's directory (with a trailing slash, or after the directory was moved)
    was refused as a change to 'the training itself'; another directory is refused as what it is."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    assert run.main(["train", "--model", tiny_ckpt, "--preset", "smoke", "--steps", "1", "--max-new-tokens", "4",
                     "--eval-every", "0", "--out-dir", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out), "--out-dir", f"{out}/"]) == 0
    assert "has finished" in capsys.readouterr().out
    moved = tmp_path / "moved"
    out.rename(moved)
    assert run.main(["train", "--resume", str(moved), "--out-dir", str(moved)]) == 0
    assert "has finished" in capsys.readouterr().out
    assert run.main(["train", "--resume", str(moved), "--out-dir", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --resume {moved} continues the run in its own directory, not in --out-dir {tmp_path / 'elsewhere'}: "
                   f"leave --out-dir out, or train on from its newest checkpoint in a new run: --model {moved} "
                   f"--out-dir {tmp_path / 'elsewhere'}\n")


def test_resume_names_a_base_model_that_no_longer_fits_its_checkpoints(tmp_path, monkeypatch, capsys):
    """A resume rebuilds the run's --model, then copies the checkpoint's weights in: a base model directory replaced
    by one of another size since the run started gave copy_'s size-mismatch traceback."""
    base, out = tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
    save_model(from_hf_model(tiny_hf_model("qwen2", hidden_size=32, intermediate_size=48)), tiny_tokenizer(), base)
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 2
    ckpt = out / "checkpoints" / "step-000001"
    assert capsys.readouterr().err == (
        f"error: checkpoint {ckpt} does not fit the run's --model (embed.weight is [259, 64] there but [259, 32] in the model): "
        f"that model changed since the run started; restore it, or start a new run from the checkpoint's weights: "
        f"--model {ckpt / 'model'} --out-dir NEW_DIR\n")


def test_resume_refuses_a_base_model_whose_weights_changed_and_takes_it_back_restored(tmp_path, monkeypatch, capsys):
    """The frozen reference is rebuilt from the base --model on resume: a base replaced by one of the same shapes
    but other weights resumed silently, with the KL term pulling towards another model. The run records its
    reference's SHA-256 in each checkpoint; a finished run (nothing to train) still reports itself."""
    base, out = tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
    metrics = (out / "metrics.jsonl").read_text()
    original = (base / "model.safetensors").read_bytes()
    m = load_model(base)
    with torch.no_grad():
        m.norm.weight[0] += 0.5  # one number of one tensor
    save_model(m, tiny_tokenizer(), base)
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 2
    ckpt = out / "checkpoints" / "step-000001"
    assert capsys.readouterr().err == (
        f"error: --resume {out}: --model {base} (the run's frozen reference) is not the model the run started from: "
        f"its weights changed since; restore them, or train on from the checkpoint in a new run (its weights become "
        f"the reference): --model {ckpt / 'model'} --out-dir NEW_DIR\n")
    assert (out / "metrics.jsonl").read_text() == metrics and len(checkpoint_dirs(out)) == 1  # nothing touched
    (base / "model.safetensors").write_bytes(original)
    assert run.main(["train", "--resume", str(out)]) == 0 and "resumed" in capsys.readouterr().out
    save_model(m, tiny_tokenizer(), base)  # changed again, after the run finished: nothing is trained from it
    assert run.main(["train", "--resume", str(out)]) == 0 and "has finished" in capsys.readouterr().out


def test_resume_names_a_damaged_trainer_state_and_the_checkpoint_before_it(tmp_path, monkeypatch, capsys):
    """A trainer_state.pt damaged after it was written (disk, copy) gave torch.load's zip-archive traceback."""
    _, out = tiny_run(tmp_path, monkeypatch, steps=3, until_step=2, save_every=1)
    state = out / "checkpoints" / "step-000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {state} is damaged (PytorchStreamReader failed reading zip archive") and err.count("\n") == 1
    assert err.endswith(f"delete {state.parent} to resume from step-000001\n")
    # a whole file of another shape (a KeyError or TypeError traceback, a fuzz found)
    for other, why in (({}, "no 'optimizer' in it"), ([1, 2], "list indices must be integers or slices, not str")):
        torch.save(other, state)
        assert run.main(["train", "--resume", str(out)]) == 2
        assert capsys.readouterr().err == (f"error: {state} is not a trainer state this project wrote ({why}): delete "
                                           f"{state.parent} to resume from step-000001\n")
    shutil.rmtree(state.parent)
    # its model damaged: the same way on (it said "copy or download it again", or to restore it from where it came)
    weights = out / "checkpoints" / "step-000001" / "model" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:1000])
    assert run.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {weights.parent.parent}'s model is damaged (") and err.count("\n") == 1
    assert err.endswith("): no earlier checkpoint is kept; start the run again\n"), err
    weights.write_bytes(whole)
    assert run.main(["train", "--resume", str(out)]) == 0 and "resumed" in capsys.readouterr().out


def test_resuming_a_run_stopped_before_its_export_writes_final_hf(tmp_path, monkeypatch, capsys):
    """A run stopped (Ctrl-C, a kill) between its last checkpoint and the export of final_hf: resuming it trained
    nothing and pointed at a final_hf that did not exist, and never wrote it."""
    _, out = tiny_run(tmp_path, monkeypatch, steps=1)
    shutil.rmtree(out / "final_hf")  # as if stopped during the export
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 0
    assert "exported now from its last checkpoint" in capsys.readouterr().out
    m, _ = run.load_spec(str(out / "final_hf"), torch.device("cpu"), torch.float32)
    ckpt, _ = run.load_spec(str(out), torch.device("cpu"), torch.float32)
    x = torch.randint(0, 259, (1, 5))
    with torch.no_grad():
        assert torch.allclose(m(x), ckpt(x), atol=1e-5)
    assert run.main(["train", "--resume", str(out)]) == 0
    assert "exported now" not in capsys.readouterr().out


def test_resuming_a_run_stopped_in_its_final_evaluation_runs_it(tmp_path, monkeypatch, capsys):
    """The last step is checkpointed before its evaluation: a run stopped there has finished, and its resume trained
    nothing and never made the evaluation. It now runs it (once: a second resume has nothing owed)."""
    from grpo.trainer import Trainer

    real = Trainer.evaluate
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "evaluate", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            tiny_run(tmp_path, monkeypatch, steps=1, eval_every=1, eval_limit=1, eval_batch_size=1, eval_at_start=False)
    out = tmp_path / "run"
    evals = lambda: [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy_strict" in r]  # noqa: E731
    assert evals() == []
    capsys.readouterr()
    assert Trainer.evaluate is real and run.main(["train", "--resume", str(out)]) == 0
    said = capsys.readouterr().out
    assert "step 1: evaluating it now (no evaluation of it was logged)" in said and "has finished" in said
    assert evals() == [1] and list((out / "tb").iterdir())
    assert run.main(["train", "--resume", str(out)]) == 0
    assert "evaluating it now" not in capsys.readouterr().out and evals() == [1]


def test_resume_names_a_damaged_run_config_and_the_copy_to_restore_it_from(tmp_path, monkeypatch, capsys):
    """A run's config.json damaged or edited by hand: a JSON error naming no file, or a TypeError traceback."""
    _, out = tiny_run(tmp_path, monkeypatch, steps=1)
    copy = out / "checkpoints" / "step-000001" / "train_config.json"
    good = json.loads(copy.read_text())
    for text, says in [('{"steps": 3,', ("is not readable JSON (Expecting property name", f"): restore it from {copy}\n")),
                       ("null", ("is not a JSON object: restore it from", f"{copy}\n")),  # (was a TypeError traceback)
                       ("[1]", ("is not a JSON object: restore it from", f"{copy}\n")),
                       (json.dumps({**good, "steps": "x"}), ("holds a config that cannot run (--steps is 'x', not an integer)", "newest checkpoint\n")),
                       (json.dumps({**good, "model": 5}), ("holds a config that cannot run (--model is 5, not a string or null)", "newest checkpoint\n")),
                       (json.dumps({**good, "adv_scale": "zzz"}), ("holds a config that cannot run (unknown --adv-scale 'zzz'", "newest checkpoint\n"))]:
        (out / "config.json").write_text(text)
        capsys.readouterr()
        assert run.main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: --resume {out}: its config.json {says[0]}") and err.endswith(says[1]), err
    # a config that runs, but not the run its checkpoints continue (edited, or another run's checkpoints copied in)
    (out / "config.json").write_text(json.dumps({**good, "lr": 0.5, "steps": 2000}))
    assert run.main(["train", "--resume", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --resume {out}: its config.json and its newest checkpoint disagree on "
                                       f"--lr (0.5 there, {good['lr']!r} in the checkpoint), --steps (2000 there, 1 in the "
                                       f"checkpoint): config.json was edited, or the checkpoints come from another run; "
                                       f"restore config.json from {copy}\n")
    # what may change on resume (and the resume's own record) may differ
    (out / "config.json").write_text(json.dumps({**good, "max_minutes": 5.0, "eval_every": 7, "resume": str(out)}))
    assert run.main(["train", "--resume", str(out)]) == 0 and "has finished" in capsys.readouterr().out
    shutil.copy(copy, out / "config.json")
    assert run.main(["train", "--resume", str(out)]) == 0 and "has finished" in capsys.readouterr().out


def test_a_checkpoint_without_its_trainer_state_is_named_and_never_cleared(tmp_path, monkeypatch, capsys):
    """Seen in a fuzz: a run's only checkpoint with its trainer_state.pt deleted read as 'stopped before its first
    checkpoint', whose advice (the train command again, without --resume) then cleared checkpoints/, weights and all.
    And a run whose config.json was deleted was 'not a run directory', where a checkpoint holds a copy to restore."""
    base, out = tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
    ckpt = out / "checkpoints" / "step-000001"
    (out / "config.json").rename(tmp_path / "config.json")
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --resume {out}: its config.json is missing: restore it from "
                                       f"{ckpt / 'train_config.json'}\n")
    (tmp_path / "config.json").rename(out / "config.json")
    (ckpt / "trainer_state.pt").unlink()
    says = (f"{out}: its checkpoint step-000001 has no trainer_state.pt (damaged or partly deleted), so the run cannot "
            f"continue exactly: train on from its weights in a new run, --model {ckpt / 'model'} --out-dir NEW_DIR\n")
    assert run.main(["train", "--resume", str(out)]) == 2
    assert capsys.readouterr().err == "error: --resume " + says
    assert run.main(["train", "--model", str(base), "--steps", "2", "--prompts-per-step", "1", "--group-size", "2",
                     "--max-new-tokens", "2", "--eval-every", "0", "--device", "cpu", "--out-dir", str(out)]) == 2
    assert capsys.readouterr().err == "error: --out-dir " + says
    assert load_model(ckpt / "model") is not None  # left whole, and the way on that the error gives works
    assert run.main(["train", "--model", str(ckpt / "model"), "--steps", "1", "--prompts-per-step", "1", "--group-size", "2",
                     "--max-new-tokens", "2", "--eval-every", "0", "--device", "cpu", "--precision", "fp32",
                     "--out-dir", str(tmp_path / "new")]) == 0
