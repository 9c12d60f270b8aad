"""run.py and its helpers (grpo/flags.py, grpo/out_dir.py): flags generated from the config dataclasses, eval end
to end on a tiny checkpoint, one-line errors."""
import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

import run
from grpo import flags, out_dir
from grpo.evaluate import EvalConfig, majority
from model_io import export_hf, save_model
from model_io.convert import from_hf_model


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
    (["eval", "--search", "mcts", "--step", "words:3"], "unknown --step 'words:3'"),
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
    (["eval", "--step", "tokens:0"], "unknown --step 'tokens:0'"),  # an mcts flag, wrong even where greedy does not use it
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
    (["train", "--rewards", "correctness=nan"], "bad reward weight 'correctness=nan': a weight must be a finite number"),
    (["train", "--rewards", "foo=1"], "unknown reward functions ['foo']"),  # before the model loads, not after
    (["eval", "--search", "majority"], "--search majority chooses among --n answers per question: give --n >= 2"),
    (["eval", "--search", "best-of-n", "--n", "1"], "--search best-of-n chooses among --n answers"),
    (["eval", "--search", "sample", "--n", "8", "--temperature", "0"], "--temperature 0 draws the same answer all --n 8 times"),
    # checked with the config, before the model loads (they failed after it, in the library's words, or not at all)
    (["train", "--mcts-step", "tokens:0"], "unknown --mcts-step 'tokens:0': use newline or tokens:N (N >= 1)"),
    (["train", "--adam-beta1", "1"], "--adam-beta1 must be in [0, 1), got 1.0"),
    (["train", "--adam-beta2", "-0.5"], "--adam-beta2 must be in [0, 1), got -0.5"),
    (["train", "--eps-low", "1.5"], "--eps-low must be in [0, 1), got 1.5"),
    (["train", "--seed", "99999999999999999999999"], "--seed must be in [0, 2**63), got 99999999999999999999999"),
    (["eval", "--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
    (["train", "--rewards", "correctness=0"], "weighs every reward 0: give at least one a nonzero weight"),
    (["train", "--rewards", "correctness=1,correctness=2"], "reward 'correctness' given twice"),
    (["train", "--rewards", "correctness=0,"], "weighs every reward 0"),  # (a trailing comma is no reward named '')
    (["train", "--shots", "7473", "--device", "cpu", "--out-dir", "{tmp}"], "--shots 7473: the train split holds 7473 problems"),
])
def test_bad_input_is_one_line_and_exit_2(argv, why, tmp_path, monkeypatch, capsys):
    import torch

    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]  # (not the working tree's runs/: a user's run may be there)

    if argv[-1] == "cuda:0":
        if torch.cuda.is_available():
            pytest.skip("CUDA is here")
        why = "CUDA is not available"
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and why in err and "\n" not in err



def test_an_out_dir_that_refuses_files_is_one_line_before_loading(tmp_path, monkeypatch, capsys):
    """A directory that exists but cannot take files (permissions, a read-only mount) is found before the model
    loads, not by a traceback at the first write."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not _refuses_files(locked):  # root writes where permissions say no; a kernel directory refuses it still
        locked = Path("/sys/kernel")
        if not (locked.is_dir() and _refuses_files(locked)):
            pytest.skip("no directory here refuses this user's files")
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before --out-dir was checked"))
    for argv in (["eval", "--limit", "1"], ["train", "--device", "cpu"]):
        assert run.main(argv + ["--out-dir", str(locked)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out-dir {locked} is not writable (") and err.count("\n") == 1


def test_a_read_only_run_directory_is_named_by_resume_and_a_limit_past_the_split_is_noted(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(ValueError, match=f"^--resume {tmp_path} is not writable \\(Read-only file system\\): pass a "
                                         f"writable directory \\(or copy the run somewhere writable and resume it there\\)$"):
        out_dir.make_out_dir(tmp_path, "--resume")
    assert flags.more_than_asked(100000, 1319, "test") == ("note: --limit 100000, but the test split has 1319 questions to "
                                                         "answer: answering all 1319")
    assert flags.more_than_asked(1319, 1319, "test") is None
    assert flags.more_than_asked(5, 1, "train") == "note: --limit 5, but the train split has 1 question to answer: answering all 1"


def _refuses_files(d: Path) -> bool:
    import tempfile

    try:
        tempfile.NamedTemporaryFile(dir=d).close()
        return False
    except OSError:
        return True


def test_a_command_that_fails_leaves_no_out_dir_it_made(tmp_path, monkeypatch, capsys):
    """An --out-dir the command made, left empty by an error (a missing GSM8K path, a bad model), is removed again;
    one that existed stays."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(["eval", "--gsm8k", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "a" / "ev")]) == 2
    assert "no such file or directory" in capsys.readouterr().err and not (tmp_path / "a").exists()  # parents made too
    assert run.main(["eval", "--model", str(tmp_path / "nomodel"), "--limit", "1", "--out-dir", str(tmp_path / "ev2")]) == 2
    assert not (tmp_path / "ev2").exists()
    (tmp_path / "kept").mkdir()
    assert run.main(["eval", "--gsm8k", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept").is_dir()


def test_a_flag_of_the_wrong_type_is_one_line_pointing_at_help(capsys):
    for argv, line in ((["eval", "--limit", "abc"], "run.py eval: error: argument --limit: invalid int value: 'abc' (see run.py eval --help)"),
                       (["evl"], "run.py: error: argument command: invalid choice: 'evl' (choose from 'train', 'eval', "
                                 "'sample', 'inspect-tree') (see run.py --help)")):
        with pytest.raises(SystemExit) as e:
            run.main(argv)
        assert e.value.code == 2 and capsys.readouterr().err == line + "\n"


def test_an_unforeseen_failure_keeps_its_traceback_but_leaves_no_out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())

    def broken(*a, **k):
        raise OSError("a failure nobody foresaw")

    monkeypatch.setattr(run, "load_spec", broken)
    with pytest.raises(OSError, match="nobody foresaw"):
        run.main(["eval", "--limit", "1", "--out-dir", str(tmp_path / "a" / "ev")])
    assert not (tmp_path / "a").exists()


def test_given_flags_these_settings_do_not_read_are_noted(tmp_path, monkeypatch, capsys):
    from grpo.config import TrainConfig
    from grpo.evaluate import EvalConfig

    note = flags.unused_flags_note
    assert note(EvalConfig(), {"temperature", "top_k", "mcts_when", "limit"}) == (
        "note: --mcts-when, --temperature, --top-k have no effect with --search greedy")
    assert note(EvalConfig(search="mcts"), {"temperature", "top_k", "fallback_p", "children"}) == (
        "note: --fallback-p, --top-k have no effect with --search mcts")  # (--top-k 0: refused when set, noted when given)
    assert note(EvalConfig(search="best-of-n", n=4), {"format_weight", "top_k", "children"}) == (
        "note: --children has no effect with --search best-of-n")
    assert note(EvalConfig(search="sample", n=2), {"temperature", "top_k", "n"}) is None
    assert note(TrainConfig(), {"mcts_prob", "tree_advantage"}) == "note: --mcts-prob, --tree-advantage have no effect with --rollouts plain"
    assert note(TrainConfig(rollouts="mcts"), {"mcts_prob", "tree_advantage_weight"}) == (
        "note: --tree-advantage-weight has no effect with --rollouts mcts, --tree-advantage outcome")
    assert note(TrainConfig(rollouts="mcts", tree_advantage="mix"), {"tree_advantage_weight", "mcts_children"}) is None

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(run, "load_spec", stop)
    capsys.readouterr()
    assert run.main(["eval", "--limit", "1", "--temperature", "0.3", "--out-dir", str(tmp_path / "ev")]) == 130
    assert capsys.readouterr().err.splitlines()[0] == "note: --temperature has no effect with --search greedy"
    assert run.main(["train", "--mcts-children", "3", "--device", "cpu", "--out-dir", str(tmp_path / "tr")]) == 130
    assert capsys.readouterr().err.splitlines()[0] == "note: --mcts-children has no effect with --rollouts plain"


def test_the_context_check_takes_the_longest_prompt_in_tokens_and_names_a_prompt_too_long_alone():
    """Byte tokens: 600 euro signs are 1,800 tokens, 900 a's 900 (by characters the a's were the longest); the system
    prompt and template add ~110."""
    import types

    tok = tiny_tokenizer()
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(max_position_embeddings=2000))
    questions = ["a" * 900, "\u20ac" * 600]
    with pytest.raises(ValueError, match=r"--max-new-tokens 200 after a prompt of 19\d\d tokens \(--shots 0\)"):
        run.check_context(model, tok, questions, [], 200)
    run.check_context(model, tok, questions[:1], [], 200)
    model.cfg.max_position_embeddings = 1500
    with pytest.raises(ValueError, match=r"^a prompt of 19\d\d tokens \(--shots 0\) already fills the model's context of "
                                         r"1500 positions: lower --shots$"):
        run.check_context(model, tok, questions, [], 1)


def test_unknown_flags_are_named_by_their_command(capsys):
    for argv, line in ((["eval", "--lim", "3"], "run.py eval: error: unrecognized arguments: --lim 3 (see run.py eval --help)"),
                       (["train", "--search", "greedy"], "run.py train: error: unrecognized arguments: --search greedy "
                                                         "(see run.py train --help)")):
        with pytest.raises(SystemExit) as e:
            run.main(argv)
        assert e.value.code == 2 and capsys.readouterr().err == line + "\n"


def test_new_tokens_past_the_models_context_are_one_line_before_anything_is_written(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """The tiny model's context is 4096 positions; its 2-shot prompts are ~900 byte tokens: --max-new-tokens 1e8 asked
    a KV cache of 51 GB (eval) or was killed for memory (train), leaving the out-dir behind."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    small = ["--model", tiny_ckpt, "--device", "cpu", "--max-new-tokens", "100000000"]
    for argv in (["eval", "--limit", "2", "--out-dir", str(tmp_path / "ev")],
                 ["train", "--steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--out-dir", str(tmp_path / "tr")],
                 ["sample", "--limit", "1"]):
        capsys.readouterr()
        assert run.main(argv + small) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.fullmatch(r"error: --max-new-tokens 100000000 after a prompt of \d+ tokens \(--shots 2\) runs past the "
                            r"model's context of 4096 positions: lower --max-new-tokens \(at most \d+ here\) or --shots", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


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
    last = capsys.readouterr().out.strip().splitlines()[-1]  # the line names every output
    assert last == f"wrote {out / 'predictions.jsonl'}, {out / 'summary.json'}, {out / 'trees.jsonl'} and {out / 'tb'}"
    assert run.main(["eval"] + common) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out / 'predictions.jsonl'} and {out / 'summary.json'}"
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


def test_flags_are_never_abbreviated_and_presets_see_every_given_flag(capsys):
    """argparse would take --max-new for --max-new-tokens, and the smoke preset would then override the user's
    value without a word: abbreviations are refused, and --no-x counts as giving x."""
    from grpo.config import TrainConfig

    with pytest.raises(SystemExit):
        run.main(["train", "--preset", "smoke", "--max-new", "64"])
    assert "unrecognized arguments: --max-new" in capsys.readouterr().err
    assert flags.given_fields(["--max-new-tokens=64", "--no-eval-at-start", "--shots", "2", "x"], TrainConfig) == \
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
    cfg = flags.config_from_args(run.EvalConfig, args)
    assert (cfg.out_dir, cfg.gsm8k) == (str(tmp_path / "ev"), str(tmp_path / "data"))


def test_eval_mcts_rescore_reaches_the_search(tiny_ckpt, tmp_path, monkeypatch):
    import grpo.evaluate as E

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    seen = []
    real = E.search
    monkeypatch.setattr(E, "search", lambda *a, **k: seen.append(a[3].rescore) or real(*a, **k))
    out = tmp_path / "e"
    assert run.main(["eval", "--model", tiny_ckpt, "--search", "mcts", "--limit", "1", "--max-new-tokens", "6", "--n-simulations", "2",
                     "--children", "2", "--step", "tokens:3", "--mcts-rescore", "--out-dir", str(out), "--device", "cpu"]) == 0
    assert seen == [True] and json.loads((out / "config.json").read_text())["mcts_rescore"] is True
