"""run.py and its helpers (grpo/flags.py, grpo/out_dir.py): flags generated from the config dataclasses, one-line
errors, --out-dir checks. The eval command's own behaviour is in test_cli_eval.py."""
import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

import run
from grpo import flags, out_dir
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
    (["train", "--profile-step", "4", "--preset", "smoke"], "--profile-step 4 is past the run's last step (--steps 3)"),
    (["train", "--profile-step", "-1"], "--profile-step must be >= 0, got -1"),
    (["inspect-tree", "x", "--max-depth", "-1"], "--max-depth must be >= 0, got -1"),
    (["eval", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["sample", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["train", "--lr", "nan"], "--lr must be a finite number, got nan"),
    # past a tensor size: a traceback after the model loaded (an audit), or an eval that ran on without a word
    (["eval", "--search", "mcts", "--n-simulations", "99999999999999999999"], "--n-simulations must be below 2**31, got 99999999999999999999"),
    (["eval", "--search", "sample", "--n", "100000000000"], "--n must be below 2**31, got 100000000000"),
    (["train", "--steps", "3000000000"], "--steps must be below 2**31, got 3000000000"),
    (["train", "--max-minutes", "inf"], "--max-minutes must be a finite number, got inf"),
    (["train", "--out-dir", ""], "--out-dir is empty: give a path"),
    (["eval", "--gsm8k", " "], "--gsm8k is empty: give a path"),  # it read the working directory
    (["eval", "--search", "mcts", "--step", "tokens:\u00b2", "--model", "{tmp}", "--out-dir", "{tmp}"], "unknown --step 'tokens:\u00b2'"),  # int() refused it
    (["eval", "--device", "cuda:\u00b2", "--model", "{tmp}", "--out-dir", "{tmp}"], "unknown --device 'cuda:\u00b2'"),
    (["eval", "--search", "mcts", "--mcts-when", "entropy:inf", "--model", "{tmp}", "--out-dir", "{tmp}"],
     "bad --mcts-when 'entropy:inf'"),  # never searched (--model: accepted, it fails at once, not after an eval)
    (["eval", "--model", "~no-such-user-mcts/x", "--out-dir", "{tmp}"], "model path ~no-such-user-mcts/x does not exist"),  # was a traceback
    (["eval", "--gsm8k", "~no-such-user-mcts/x", "--out-dir", "{tmp}"], "--gsm8k ~no-such-user-mcts/x: no such file or directory"),
    (["train", "--rewards", "correctness=nan"], "--rewards 'correctness=nan': bad reward weight 'correctness=nan': a weight must be a finite number"),
    (["train", "--rewards", "foo=1"], "--rewards 'foo=1': unknown reward functions ['foo']"),  # before the model loads; named the flag
    (["eval", "--search", "majority"], "--search majority chooses among --n answers per question: give --n >= 2"),
    (["eval", "--search", "best-of-n", "--n", "1"], "--search best-of-n chooses among --n answers"),
    (["eval", "--search", "sample", "--n", "8", "--temperature", "0"], "--temperature 0 draws the same answer all --n 8 times"),
    (["eval", "--search", "mcts", "--temperature", "0"], "--temperature 0 samples the same step for all --children 4"),
    # checked with the config, before the model loads (they failed after it, in the library's words, or not at all)
    (["train", "--mcts-step", "tokens:0"], "unknown --mcts-step 'tokens:0': use newline or tokens:N (N >= 1)"),
    (["train", "--adam-beta1", "1"], "--adam-beta1 must be in [0, 1), got 1.0"),
    (["train", "--adam-beta2", "-0.5"], "--adam-beta2 must be in [0, 1), got -0.5"),
    (["train", "--eps-low", "1.5"], "--eps-low must be in [0, 1), got 1.5"),
    (["train", "--seed", "99999999999999999999999"], "--seed must be in [0, 2**63), got 99999999999999999999999"),
    (["eval", "--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
    (["train", "--rewards", "correctness=0"], "weighs every reward 0: give at least one a nonzero weight"),
    (["train", "--rewards", "correctness=1,correctness=2"], "--rewards 'correctness=1,correctness=2': reward 'correctness' given twice"),
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
    # lookahead decoding commits the most visited first step: --mcts-answer chose nothing there, unsaid (an audit)
    assert note(EvalConfig(search="mcts", mcts_when="every:3"), {"mcts_answer", "children"}) == (
        "note: --mcts-answer has no effect with --search mcts, --mcts-when every:3")
    assert note(EvalConfig(search="mcts"), {"mcts_answer"}) is None
    assert note(EvalConfig(search="best-of-n", n=4), {"format_weight", "top_k", "children"}) == (
        "note: --children has no effect with --search best-of-n")
    assert note(EvalConfig(search="sample", n=2), {"temperature", "top_k", "n"}) is None
    assert note(TrainConfig(), {"mcts_prob", "tree_advantage"}) == "note: --mcts-prob, --tree-advantage have no effect with --rollouts plain"
    assert note(TrainConfig(rollouts="mcts"), {"mcts_prob", "tree_advantage_weight"}) == (
        "note: --tree-advantage-weight has no effect with --rollouts mcts, --tree-advantage outcome")
    assert note(TrainConfig(rollouts="mcts", tree_advantage="mix"), {"tree_advantage_weight", "mcts_children"}) is None
    tree = {"mcts_prob", "tree_advantage", "tree_advantage_weight", "mcts_simulations", "mcts_children", "mcts_c_puct",
            "mcts_root", "mcts_step", "mcts_step_tokens"}
    assert note(TrainConfig(), tree | {"steps", "beta"}) == (
        "note: --mcts-c-puct, --mcts-children, --mcts-prob, --mcts-root, --mcts-simulations, --mcts-step, --mcts-step-tokens, "
        "--tree-advantage, --tree-advantage-weight have no effect with --rollouts plain")

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
    from data import encode_prompts

    P = len(encode_prompts(tok, questions[:1], [])[0])
    model.cfg.max_position_embeddings = P + 10
    run.check_context(model, tok, questions[:1], [], 10)  # the context filled exactly
    with pytest.raises(ValueError, match=rf"^--max-new-tokens 11 after a prompt of {P} tokens .* \(at most 10 here\)$"):
        run.check_context(model, tok, questions[:1], [], 11)  # (no ' or --shots': there are none to lower)
    model.cfg.max_position_embeddings = P + 1
    run.check_context(model, tok, questions[:1], [], 1)
    model.cfg.max_position_embeddings = P
    with pytest.raises(ValueError, match=rf"^a prompt of {P} tokens \(--shots 0\) already fills"):
        run.check_context(model, tok, questions[:1], [], 1)
    model.cfg.max_position_embeddings = 1500
    # zero-shot, the line said to lower --shots all the same (a fuzz)
    with pytest.raises(ValueError, match=r"^a prompt of 19\d\d tokens \(--shots 0\) already fills the model's context of "
                                         r"1500 positions: pass a model with a longer context, or questions that fit it$"):
        run.check_context(model, tok, questions, [], 1)
    from data import Problem

    with pytest.raises(ValueError, match=r"^a prompt of \d+ tokens \(--shots 1\) already fills .*: lower --shots$"):
        run.check_context(model, tok, questions[:1], [Problem("a" * 900, "1", "a" * 9, 0)], 1)


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


def test_flags_are_never_abbreviated_and_presets_see_every_given_flag(capsys):
    """argparse would take --max-new for --max-new-tokens, and the smoke preset would then override the user's
    value without a word: abbreviations are refused, and --no-x counts as giving x."""
    from grpo.config import TrainConfig

    with pytest.raises(SystemExit):
        run.main(["train", "--preset", "smoke", "--max-new", "64"])
    assert "unrecognized arguments: --max-new" in capsys.readouterr().err
    assert flags.given_fields(["--max-new-tokens=64", "--no-eval-at-start", "--shots", "2", "x"], TrainConfig) == \
        {"max_new_tokens", "eval_at_start", "shots"}


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


def test_flags_parse_to_their_fields_types_and_booleans_both_ways():
    """Each flag typed from its field's annotation (an optional one from its type), its default the field's; a boolean
    is --x / --no-x, the last one given winning."""
    from grpo.config import TrainConfig

    parser = argparse.ArgumentParser()
    flags.add_config_args(parser, TrainConfig)

    def cfg(*argv):
        return flags.config_from_args(TrainConfig, parser.parse_args(list(argv)))

    assert cfg() == TrainConfig()
    c = cfg("--steps", "7", "--lr", "1e-3", "--model", "m", "--no-eval-at-start", "--no-deterministic", "--stop", "")
    assert (c.steps, c.lr, c.model, c.eval_at_start, c.deterministic, c.stop) == (7, 0.001, "m", False, False, "")
    assert type(c.steps) is int and type(c.lr) is float
    assert cfg("--eval-at-start").eval_at_start is True and cfg("--no-eval-at-start", "--eval-at-start").eval_at_start is True
    assert cfg("--eval-at-start", "--no-eval-at-start").eval_at_start is False


def test_a_path_flag_expands_the_tilde_the_shell_leaves(monkeypatch, tmp_path):
    """`--out-dir=~/x`: the shell expands no '~' after '=', so the run went to a directory named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(run.EvalConfig)})
    args.out_dir, args.gsm8k = "~/ev", "~/data"
    cfg = flags.config_from_args(run.EvalConfig, args)
    assert (cfg.out_dir, cfg.gsm8k) == (str(tmp_path / "ev"), str(tmp_path / "data"))


def test_an_out_dir_in_use_by_another_command_is_refused_and_a_dead_holder_does_not_block(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """The same train or eval launched twice on one directory: the second is refused before it loads anything or
    touches the first's files (a train started over where a run stopped before its first checkpoint would clear
    them). The lock dies with its process (kill -9 included), and a finished command leaves no lock file."""
    import fcntl
    import os
    import signal

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text('{"group_size": 2}')  # (a training config: train writes it first)
    (early / "metrics.jsonl").write_text('{"step": 1}\n')  # a run before its first checkpoint: restartable
    before = sorted(p.name for p in early.iterdir())
    with open(early / ".lock", "a+") as held:  # the first command, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on gpu-node: run.py train\n")
        held.flush()
        monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded beside a running command"))
        for argv in (["train", "--out-dir", str(early), "--device", "cpu"], ["eval", "--out-dir", str(tmp_path / "ev")]):
            if argv[0] == "eval":  # an eval in progress in "ev"
                (tmp_path / "ev").mkdir()
                os.link(early / ".lock", tmp_path / "ev" / ".lock")
            assert run.main(argv) == 2
            assert capsys.readouterr().err == (f"error: {argv[argv.index('--out-dir') + 1]} is in use by another run.py command "
                                               f"(pid 4242 on gpu-node: run.py train): wait for it to end, or pass another --out-dir\n")
        assert sorted(p.name for p in early.iterdir()) == sorted(before + [".lock"])  # nothing cleared
        monkeypatch.undo()
        monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    # a holder killed with SIGKILL (no cleanup: its lock file stays) blocks nothing
    out = tmp_path / "after-kill"
    out.mkdir()
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('pid x: run.py eval\\n'); "
            "f.flush(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (out / ".lock").is_file()
    assert run.main(["eval", "--model", tiny_ckpt, "--limit", "1", "--max-new-tokens", "2", "--out-dir", str(out), "--device", "cpu"]) == 0
    assert ".lock" not in [p.name for p in out.iterdir()]
    # under torchrun rank 0 alone takes it (the other ranks share its directory)
    monkeypatch.setenv("RANK", "1")
    out_dir.take(out, "train")
    assert not (out / ".lock").exists() and not out_dir.LOCKS
    # a file system without locks (flock: ENOLCK): the command goes on without one, leaving no lock file
    import errno

    monkeypatch.setenv("RANK", "0")

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out_dir.take(out, "train")
    assert not (out / ".lock").exists() and not out_dir.LOCKS


def test_a_full_quota_is_one_line_and_out_of_memory_is_said_by_the_rank_that_ran_out(tmp_path, monkeypatch, capsys):
    """Over a disk quota (EDQUOT) reads as a full disk does; out of memory is said by the rank that met it (the others
    are not told), and only rank 0 says how to go on (it alone writes checkpoints)."""
    import errno

    from grpo.stops import stop_line

    args = argparse.Namespace(command="train", resume=None, out_dir=str(tmp_path / "run"))
    assert stop_line(OSError(errno.EDQUOT, "Disk quota exceeded", "/x/f"), args) == (
        "error: Disk quota exceeded: /x/f; no checkpoint was written yet, so there is nothing to resume (the same command "
        "starts it again)", 2, False)
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 8 bytes. Error code 12 (Cannot allocate memory)")
    line, code, every_rank = stop_line(oom, args)
    assert line.startswith("error: out of memory (can't allocate memory: you tried to allocate 8 bytes): lower --micro-batch")
    assert line.endswith("; no checkpoint was written yet, so there is nothing to resume (the same command starts it again)")
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    line, code, every_rank = stop_line(oom, args)
    assert line.startswith("error: out of memory on rank 1 (can't allocate") and line.endswith("--mcts-children")
    assert (code, every_rank) == (2, True)
    monkeypatch.setattr(run, "load_spec", lambda *a: (_ for _ in ()).throw(oom))
    capsys.readouterr()
    assert run.main(["eval", "--limit", "1", "--device", "cpu", "--out-dir", str(tmp_path / "ev")]) == 2
    assert capsys.readouterr().err == ("error: out of memory on rank 1 (can't allocate memory: you tried to allocate 8 bytes): "
                                       "lower --batch-size (questions at once; each with --n answers, or tree search's "
                                       "--children rows and --n-simulations x --children nodes)\n")


def test_an_out_dir_through_a_symlink_loop_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    for command in ("eval", "train"):
        assert run.main([command, "--out-dir", "loop/x"]) == 2  # (was a RuntimeError traceback)
        err = capsys.readouterr().err
        assert err.startswith("error: --out-dir loop/x cannot be made (") and err.count("\n") == 1, err
