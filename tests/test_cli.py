"""run.py: flags generated from the config dataclasses, eval end to end on a tiny checkpoint, one-line errors."""
import argparse
import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

import run
from grpo.evaluate import EvalConfig, majority
from grpo.checkpointing import checkpoint_dirs
from model_io import ModelSpecError, export_hf, load_model, save_model
from model_io.convert import from_hf_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(from_hf_model(tiny_hf_model("qwen2")), tiny_tokenizer(), path)
    return str(path)


@pytest.mark.parametrize("command", list(run.COMMANDS))
def test_help_documents_every_field_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as e:
        run.main([command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    cls = run.COMMANDS[command][0]
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            assert f.name.upper() in out
            continue
        assert "--" + f.name.replace("_", "-") in out
        assert f"(default: {f.default if f.default != '' else repr('')})" in out  # an empty default shows as ''


def test_eval_greedy_writes_predictions_and_summary(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "ev"
    assert run.main(["eval", "--model", tiny_ckpt, "--limit", "3", "--max-new-tokens", "6", "--batch-size", "2",
                     "--out-dir", str(out), "--device", "cpu"]) == 0
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and all(len(r["completions"]) == 1 for r in rows)
    assert all(1 <= r["tokens"][0] <= 6 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_strict", "accuracy_lenient", "format_strict_rate", "format_soft_rate", "generated_tokens_per_answer",
                "generated_tokens_per_question", "forward_tokens_per_question", "seconds_per_question", "seconds_per_generated_token"):
        assert key in summary
    assert summary["questions"] == 3 and json.loads((out / "config.json").read_text())["limit"] == 3
    assert not (out / "predictions.jsonl.partial").exists()
    # on the train split the prompt's worked examples (its first --shots questions) are not scored
    assert run.main(["eval", "--model", tiny_ckpt, "--split", "train", "--shots", "2", "--limit", "1", "--max-new-tokens", "2",
                     "--out-dir", str(out), "--device", "cpu"]) == 0
    assert [json.loads(l)["index"] for l in (out / "predictions.jsonl").read_text().splitlines()] == [2]


def test_eval_sample_reports_pass_and_majority(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "ev"
    assert run.main(["eval", "--model", tiny_ckpt, "--search", "sample", "--n", "3", "--limit", "2",
                     "--max-new-tokens", "4", "--out-dir", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers_per_question"] == 3 and "pass_at_n_strict" in summary and "majority_at_n_lenient" in summary


def test_majority_vote():
    assert majority(["3", None, "4", "4", "3"]) == "3"  # tie: the first seen wins
    assert majority(["1", "2", "2"]) == "2" and majority([None, None]) is None


@pytest.mark.parametrize("argv,why", [
    (["eval", "--search", "beam"], "unknown --search"),
    (["eval", "--search", "greedy", "--n", "4"], "--n is for sample"),
    (["eval", "--search", "mcts", "--step", "words:3"], "unknown step"),
    (["eval", "--search", "mcts", "--mcts-when", "often"], "--mcts-when"),
    (["eval", "--model", "./nowhere", "--limit", "1"], "does not exist"),
    (["eval", "--device", "cuda:0"], None),
    (["eval", "--device", "tpu"], "unknown --device 'tpu': use cpu, cuda, cuda:N or auto"),
    (["eval", "--search", "mcts", "--format-weight", "2"], "--format-weight must be in [0, 1], got 2.0"),
    (["eval", "--search", "mcts", "--c-puct", "-1"], "--c-puct must be >= 0"),
    (["eval", "--search", "sample", "--n", "2", "--top-k", "-1"], "--top-k must be >= 0"),
    (["eval", "--temperature", "-1"], "--temperature must be >= 0"),
    (["eval", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["eval", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "--step", "tokens:0"], "unknown step"),  # an mcts flag, wrong even where greedy does not use it
    (["sample", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["sample", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["sample", "--temperature", "-1"], "--temperature must be >= 0"),
    (["train", "--device", "gpu"], "unknown --device 'gpu'"),
    (["train", "--shots", "-1"], "--shots must be >= 0, got -1"),
    (["train", "--token-budget", "-3"], "--token-budget must be >= 0, got -3"),
    (["train", "--logprob-chunk", "0"], "--logprob-chunk must be >= 1, got 0"),
    (["train", "--eval-limit", "0"], "--eval-limit must be >= 1, got 0"),
    (["train", "--beta", "-1"], "--beta must be >= 0"),
    (["train", "--temperature", "0"], "--temperature must be > 0"),
    (["train", "--group-size", "0"], "--group-size must be >= 2, got 0"),
    (["train", "--mcts-children", "0"], "--mcts-children must be >= 1, got 0"),
    (["inspect-tree", "x", "--max-depth", "-1"], "--max-depth must be >= 0, got -1"),
    (["eval", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["sample", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["train", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["train", "--max-minutes", "inf"], "--max-minutes must be a finite number, got inf"),
    (["train", "--out-dir", ""], "--out-dir is empty: give a path"),
    (["eval", "--gsm8k", " "], "--gsm8k is empty: give a path"),  # it read the working directory
])
def test_bad_input_is_one_line_and_exit_2(argv, why, monkeypatch, capsys):
    import torch

    if argv[-1] == "cuda:0":
        if torch.cuda.is_available():
            pytest.skip("CUDA is here")
        why = "CUDA is not available"
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and why in err and "\n" not in err



def test_eval_out_dir_is_checked_before_loading_and_old_outputs_are_replaced(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """An --out-dir that is a file fails in one line before the model loads; an earlier eval's outputs in the
    directory (trees and TensorBoard events of an mcts run) do not survive a greedy run beside its new files."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    (tmp_path / "afile").write_text("x")
    real_load = run.load_spec
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before --out-dir was checked"))
    assert run.main(["eval", "--out-dir", str(tmp_path / "afile"), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file: pass a directory" in err
    monkeypatch.setattr(run, "load_spec", real_load)
    out = tmp_path / "ev"
    common = ["--model", tiny_ckpt, "--limit", "1", "--max-new-tokens", "4", "--device", "cpu", "--out-dir", str(out)]
    assert run.main(["eval", "--search", "mcts", "--n-simulations", "1", "--children", "2", "--step", "tokens:2"] + common) == 0
    assert (out / "trees.jsonl").is_file() and (out / "tb").is_dir()
    assert run.main(["eval"] + common) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "predictions.jsonl", "summary.json"]
    assert json.loads((out / "config.json").read_text())["search"] == "greedy"


def test_inspect_tree_refuses_a_file_that_holds_no_trees_and_reads_an_eval_directory(tmp_path, capsys):
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"index": 0, "completions": ["x"]}) + "\n")
    assert run.main(["inspect-tree", str(tmp_path / "predictions.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a search tree" in err
    tree = {"index": 3, "question": "q?", "gold": "1", "answer": "1",
            "nodes": [{"id": 0, "parent": -1, "visits": 1, "value": 0.5, "prior": 1.0, "text": "", "answer": None, "terminal": False}]}
    (tmp_path / "trees.jsonl").write_text(json.dumps(tree) + "\n")
    assert run.main(["inspect-tree", str(tmp_path)]) == 0
    assert "Q3: q?" in capsys.readouterr().out


def test_train_run_dirs_that_cannot_go_on_say_so_and_a_finished_one_is_left_alone(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A run stopped before its first checkpoint is not offered --resume (which could not take it); resuming a
    finished run trains nothing and says where its model is; 'auto' and the data path beside --resume are no
    change; Ctrl-C is one line that says how to continue."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text("{}")
    (early / "metrics.jsonl").write_text('{"step": 1}\n')
    capsys.readouterr()
    assert run.main(["train", "--out-dir", str(early)]) == 2
    assert "stopped before its first checkpoint (nothing to resume)" in capsys.readouterr().err
    assert run.main(["train", "--resume", str(early)]) == 2
    assert "stopped before its first checkpoint, so there is nothing to resume" in capsys.readouterr().err
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
    assert capsys.readouterr().err == "interrupted: no checkpoint was written yet, so there is nothing to resume\n"

def test_cli_runs_as_a_script(tiny_ckpt, tmp_path):
    env = {"GSM8K_DIR": gsm8k_dir(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "sample", "--model", tiny_ckpt, "--limit", "1",
                        "--max-new-tokens", "5", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "=== Q0:" in p.stdout and "gold '18'" in p.stdout
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "sample", "--model", tiny_ckpt, "--limit", "1", "--split", "train",
                        "--stop", "", "--top-p", "0.5", "--max-new-tokens", "5", "--device", "cpu"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "=== Q2:" in p.stdout  # train questions 0 and 1 are the prompt's worked examples


def test_eval_config_validation():
    with pytest.raises(ValueError):
        EvalConfig(limit=-1)


@pytest.mark.parametrize("flag,value,rule", [("--children", "0", ">= 1"), ("--n-simulations", "0", ">= 1"),
                                             ("--step-tokens", "0", ">= 1"), ("--rollout-depth", "-1", ">= 0")])
def test_eval_tree_search_ranges_name_the_flag(flag, value, rule, capsys):
    """Seen: `eval --children 0` said 'n_simulations, children and step_tokens must be >= 1, rollout_depth >= 0',
    naming four config fields and not the flag or the value that was wrong."""
    assert run.main(["eval", flag, value]) == 2
    assert capsys.readouterr().err == f"error: {flag} must be {rule}, got {value}\n"


@pytest.mark.parametrize("kw,needle", [(dict(search="mcts", top_k=5), "--top-k 5 is not used by --search mcts"),
                                       (dict(search="mcts", fallback_p=0.5), "--fallback-p 0.5 applies to lookahead")])
def test_eval_refuses_flags_that_tree_search_would_ignore(kw, needle):
    """Seen: `eval --search mcts --top-k 5` and `--search mcts --fallback-p 0.5` (tree mode) ran plain tree search
    and wrote top_k 5 / fallback_p 0.5 into config.json as if they had applied. (EvalConfig, not run.main: without
    the check, run.main would run a whole eval.)"""
    with pytest.raises(ValueError, match=needle):
        EvalConfig(**kw)
    EvalConfig(search="mcts", mcts_when="every:8", fallback_p=0.5)  # lookahead does use it
    EvalConfig(search="sample", n=2, top_k=5)


def test_train_cli_writes_a_complete_run_and_refuses_to_overwrite_it(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_ckpt, "--preset", "smoke", "--max-new-tokens", "8", "--eval-limit", "2",
            "--out-dir", str(out), "--device", "cpu"]
    assert run.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["steps"], cfg["group_size"], cfg["max_new_tokens"]) == (3, 4, 8)  # preset, and the flag over it
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3] and "eval/accuracy_strict" in lines[-1]
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
    assert run.main(["train", "--resume", str(out), "--token-budget", "0", "--lr", "1e-05", "--seed", "0"]) == 0
    assert "resumed" in capsys.readouterr().out and steps() == [1, 2, 3]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["token_budget"] == 0 and cfg["resume"] == str(out) and cfg["steps"] == 3
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


def _tiny_run(tmp_path, monkeypatch, steps: int, until_step: int | None = None, **kw):
    """A tiny trained run for the resume tests: -> (its --model directory, its run directory)."""
    from grpo.config import TrainConfig

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    base, out = tmp_path / "base", tmp_path / "run"
    save_model(from_hf_model(tiny_hf_model("qwen2")), tiny_tokenizer(), base)
    run.cmd_train(TrainConfig(model=str(base), steps=steps, prompts_per_step=1, group_size=2, max_new_tokens=2,
                              eval_every=0, out_dir=str(out), device="cpu", precision="fp32", **kw), until_step=until_step)
    return base, out


def test_resume_names_a_base_model_that_no_longer_fits_its_checkpoints(tmp_path, monkeypatch, capsys):
    """A resume rebuilds the run's --model, then copies the checkpoint's weights in: a base model directory replaced
    by one of another size since the run started gave copy_'s size-mismatch traceback."""
    base, out = _tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
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
    base, out = _tiny_run(tmp_path, monkeypatch, steps=2, until_step=1, save_every=1)
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
    _, out = _tiny_run(tmp_path, monkeypatch, steps=3, until_step=2, save_every=1)
    state = out / "checkpoints" / "step-000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    capsys.readouterr()
    assert run.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {state} is damaged (PytorchStreamReader failed reading zip archive") and err.count("\n") == 1
    assert err.endswith(f"delete {state.parent} to resume from step-000001\n")
    shutil.rmtree(state.parent)
    assert run.main(["train", "--resume", str(out)]) == 0 and "resumed" in capsys.readouterr().out


def test_resuming_a_run_stopped_before_its_export_writes_final_hf(tmp_path, monkeypatch, capsys):
    """A run stopped (Ctrl-C, a kill) between its last checkpoint and the export of final_hf: resuming it trained
    nothing and pointed at a final_hf that did not exist, and never wrote it."""
    _, out = _tiny_run(tmp_path, monkeypatch, steps=1)
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


def test_resume_names_a_damaged_run_config_and_the_copy_to_restore_it_from(tmp_path, monkeypatch, capsys):
    """A run's config.json damaged or edited by hand: a JSON error naming no file, or a TypeError traceback."""
    _, out = _tiny_run(tmp_path, monkeypatch, steps=1)
    copy = out / "checkpoints" / "step-000001" / "train_config.json"
    good = json.loads(copy.read_text())
    for text, says in [('{"steps": 3,', ("is not readable JSON (Expecting property name", f"): restore it from {copy}\n")),
                       (json.dumps({**good, "steps": "x"}), ("holds a config that cannot run ('>=' not supported", "newest checkpoint\n")),
                       (json.dumps({**good, "adv_scale": "zzz"}), ("holds a config that cannot run (unknown --adv-scale 'zzz'", "newest checkpoint\n"))]:
        (out / "config.json").write_text(text)
        capsys.readouterr()
        assert run.main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: --resume {out}: its config.json {says[0]}") and err.endswith(says[1]), err
    shutil.copy(copy, out / "config.json")
    assert run.main(["train", "--resume", str(out)]) == 0 and "has finished" in capsys.readouterr().out


def test_a_training_run_directory_loads_its_newest_checkpoint_else_its_final_export(tmp_path, capsys, monkeypatch):
    """`--model runs/train` (run.py's load_spec; what a user tries first after training): the newest finished
    checkpoint's model, said on stderr; with the checkpoints deleted, final_hf; with neither yet, a one-line error."""
    old, new = from_hf_model(tiny_hf_model("llama", seed=1)), from_hf_model(tiny_hf_model("llama", seed=2))
    tok, rd = tiny_tokenizer(), tmp_path / "run"
    (rd / "checkpoints").mkdir(parents=True)
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


@pytest.mark.parametrize("search,extra", [("majority", ["--n", "3"]), ("best-of-n", ["--n", "3"]),
                                          ("mcts", ["--n-simulations", "2", "--children", "2", "--step", "tokens:3", "--rollout-depth", "1"]),
                                          ("mcts-lookahead", ["--n-simulations", "2", "--children", "2", "--step", "tokens:3",
                                                              "--mcts-when", "every:2", "--fallback-p", "0.5"])])
def test_eval_strategies_and_tree_dumps(search, extra, tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / search
    search = search.split("-lookahead")[0]
    assert run.main(["eval", "--model", tiny_ckpt, "--search", search, "--limit", "2", "--max-new-tokens", "6",
                     "--out-dir", str(out), "--device", "cpu", *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary["questions"] == 2 and all(0 <= r["final"] < len(r["completions"]) for r in rows)
    assert summary["generated_tokens_per_question"] >= summary["generated_tokens_per_answer"]
    if search == "mcts" and "--mcts-when" in extra:
        assert not (out / "trees.jsonl").exists() and summary["generated_tokens_per_answer"] <= 6
    elif search == "mcts":
        assert summary["generated_tokens_per_question"] <= 2 * 2 * 3 * 2  # sims x K x step x (1 + depth)
        # a batch of trees runs minutes on a CPU with the question count standing still: the bar names the simulation
        assert "simulation 2/2" in capsys.readouterr().err
        assert run.main(["inspect-tree", str(out / "trees.jsonl"), "--index", "1"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("Q1: ") and "[0] N=" in text and "tree/nodes" in text
        assert list((out / "tb").glob("events.out.tfevents.*"))
        assert run.main(["inspect-tree", str(out / "trees.jsonl"), "--index", "5"]) == 2
    else:
        assert summary["answers_per_question"] == 3 and summary["generated_tokens_per_question"] > summary["generated_tokens_per_answer"]


def test_best_of_n_and_majority_choices():
    from grpo.evaluate import choose

    texts = ["<reasoning>a</reasoning><answer>4</answer>", "so 5", "<answer>4</answer>", "7"]
    lenient = ["4", "5", "4", "7"]
    done = ["stop"] * 4
    assert choose("majority", texts, lenient, 0.3, done) == 0
    assert choose("best-of-n", texts, lenient, 0.3, done) == 0  # formatted and agreeing with another answer
    assert choose("sample", texts, lenient, 0.3, done) == -1 and choose("greedy", texts[:1], lenient[:1], 0.3, done[:1]) == 0


def test_majority_answers_with_a_formatted_text_of_the_winning_number():
    """Seen: samples ['so 4', '<answer>4</answer>', '5'] with gold 4: majority chose text 0 (the first '4'), so
    --search majority scored 0 strict where --search sample's majority_at_n_strict on the same samples scored 1,
    and the strict score depended on which agreeing sample came first."""
    from grpo.evaluate import choose

    texts = ["so 4", "<reasoning>r</reasoning>\n<answer>\n4\n</answer>", "5"]
    assert choose("majority", texts, ["4", "4", "5"], 0.3, ["stop"] * 3) == 1
    assert choose("majority", ["so 4", "4 again", "5"], ["4", "4", "5"], 0.3, ["stop"] * 3) == 0  # none formatted: first

def test_best_of_n_scores_cut_answers_as_tree_search_does():
    """An answer cut by the token limit has no answer in tree search's value (mcts/search.py: no agreement, not in
    the pool); best-of-n, which claims that value, counted the last number of cut texts. Seen: three answers cut
    at '... so 15' outvoted a finished, formatted '7' (value 0.525 against 0.475) and best-of-n chose a cut one."""
    from grpo.evaluate import choose
    from mcts.interface import Candidates, self_consistency_value

    fin, cut = "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>", "<reasoning>\n10 + 5 = 15, so 15"
    texts, finish = [fin, cut, cut, cut], ["stop", "length", "length", "length"]
    lenient = ["7", "15", "15", "15"]
    searched = self_consistency_value(0.3)(Candidates(texts, ["7", None, None, None], [True, False, False, False],
                                                      [["7"]] * 4, [0] * 4, [[]] * 4))
    assert searched == pytest.approx([1.0, 0.0, 0.0, 0.0])  # 0.3 x format 1 + 0.7 x agreement 1/1; cut: nothing
    assert choose("best-of-n", texts, lenient, 0.3, finish) == 0
    assert choose("best-of-n", texts, lenient, 0.3, ["stop"] * 4) == 1  # finished, the three 15s do outvote it


def test_train_cli_with_tree_rollouts(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "tree"
    assert run.main(["train", "--model", tiny_ckpt, "--rollouts", "mcts", "--tree-advantage", "mix", "--steps", "2",
                     "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "4", "--mcts-step", "tokens:2",
                     "--eval-every", "0", "--token-budget", "10000", "--out-dir", str(out), "--device", "cpu"]) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["rollout/tree_groups"] for l in lines] == [1, 1] and lines[-1]["rollout/generated_tokens_total"] > 0


def test_flags_are_never_abbreviated_and_presets_see_every_given_flag(capsys):
    """argparse would take --max-new for --max-new-tokens, and the smoke preset would then override the user's
    value without a word: abbreviations are refused, and --no-x counts as giving x."""
    from grpo.config import TrainConfig

    with pytest.raises(SystemExit):
        run.main(["train", "--preset", "smoke", "--max-new", "64"])
    assert "unrecognized arguments: --max-new" in capsys.readouterr().err
    assert run.given_fields(["--max-new-tokens=64", "--no-eval-at-start", "--shots", "2", "x"], TrainConfig) == \
        {"max_new_tokens", "eval_at_start", "shots"}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_decode_flag_picks_the_sampling_path(tiny_ckpt, tmp_path, monkeypatch, mode):
    """--decode static runs the GPU's static-shape path (eagerly, on this CPU); both give the same greedy answers."""
    import model_io.sampler as sampler
    import model_io.static_decode as sd

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(sampler, "_decode_mode", "auto")  # restored after the test: the flag sets a process default
    calls = []
    real = sd.decode_static
    monkeypatch.setattr(sd, "decode_static", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / mode
    assert run.main(["eval", "--model", tiny_ckpt, "--limit", "3", "--max-new-tokens", "6", "--batch-size", "3",
                     "--out-dir", str(out), "--device", "cpu", "--decode", mode]) == 0
    assert bool(calls) == (mode == "static")
    got = [json.loads(l)["completions"] for l in (out / "predictions.jsonl").read_text().splitlines()]
    monkeypatch.setattr(sampler, "_decode_mode", "auto")
    assert run.main(["eval", "--model", tiny_ckpt, "--limit", "3", "--max-new-tokens", "6", "--batch-size", "3",
                     "--out-dir", str(tmp_path / "auto"), "--device", "cpu"]) == 0
    assert got == [json.loads(l)["completions"] for l in (tmp_path / "auto" / "predictions.jsonl").read_text().splitlines()]


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
    assert run.main(["sample", "--gsm8k", test_file]) == 2
    assert "is one file" in capsys.readouterr().err
    monkeypatch.setattr(run.D, "init_from_env", lambda device: (Dist(rank=0, world=2), torch.device("cpu")))
    assert run.main(["train", "--prompts-per-step", "3", "--gsm8k", gsm8k_dir(), "--out-dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --prompts-per-step 3 must be a multiple of the 2 processes\n"
    assert not (tmp_path / "r2" / "config.json").exists()


def test_an_out_dir_holding_a_model_or_an_eval_is_refused_and_left_as_it_was(tmp_path, monkeypatch, capsys):
    """`train --model ./m --out-dir ./m` once replaced the model's config.json by the run's (the model lost); eval
    did the same; and train wrote its config.json over an eval's, beside that eval's summary."""
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before the out-dir was checked"))
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    model, tok = from_hf_model(tiny_hf_model("llama")), tiny_tokenizer()
    export_hf(model, tok, tmp_path / "hf")
    save_model(model, tok, tmp_path / "ours")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "config.json").write_text('{"limit": 3}')
    (tmp_path / "ev" / "summary.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for command, out, what in [("train", "hf", "a model"), ("eval", "hf", "a model"), ("train", "ours", "a model"),
                               ("eval", "ours", "a model"), ("train", "ev", "an eval's outputs")]:
        assert run.main([command, "--out-dir", str(tmp_path / out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out-dir {tmp_path / out} holds {what}") and f"--out-dir (e.g. {tmp_path / out / command})" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_inspect_tree_skips_blank_lines_and_names_what_is_missing(tmp_path, capsys):
    node = {"id": 0, "parent": -1, "visits": 1, "value": 0.5, "prior": 1.0, "text": "", "answer": None, "terminal": False}
    tree = {"index": 0, "question": "q?", "gold": "1", "answer": "1", "nodes": [node]}
    f = tmp_path / "trees.jsonl"
    f.write_text(json.dumps(tree) + "\n\n")
    assert run.main(["inspect-tree", str(f)]) == 0
    capsys.readouterr()
    for bad, why in [({k: v for k, v in tree.items() if k != "gold"}, "not a search tree"),
                     ({**tree, "nodes": []}, "not a search tree"),
                     ({**tree, "nodes": [{k: v for k, v in node.items() if k != "parent"}]}, "not a search tree")]:
        f.write_text(json.dumps(bad) + "\n")
        assert run.main(["inspect-tree", str(f)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    f.write_text("")
    assert run.main(["inspect-tree", str(f)]) == 2
    assert "holds no trees" in capsys.readouterr().err
    f.write_bytes(b"\x87\xff\x00")
    assert run.main(["inspect-tree", str(f)]) == 2
    assert "is not a text file" in capsys.readouterr().err
    f.unlink()
    assert run.main(["inspect-tree", str(tmp_path)]) == 2
    assert "has no trees.jsonl: `run.py eval --search mcts --mcts-when tree" in capsys.readouterr().err


def test_a_path_flag_expands_the_tilde_the_shell_leaves(monkeypatch, tmp_path):
    """`--out-dir=~/x`: the shell expands no '~' after '=', so the run went to a directory named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(run.EvalConfig)})
    args.out_dir, args.gsm8k = "~/ev", "~/data"
    cfg = run.config_from_args(run.EvalConfig, args)
    assert (cfg.out_dir, cfg.gsm8k) == (str(tmp_path / "ev"), str(tmp_path / "data"))
