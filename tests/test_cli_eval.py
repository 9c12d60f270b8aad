"""`run.py eval` end to end on a tiny checkpoint (greedy, sampling, majority, best-of-n, tree search and its dumps,
--decode), EvalConfig's checks, and `run.py inspect-tree`."""
import dataclasses
import json
import os

import pytest
from conftest import gsm8k_dir

import run
from grpo.evaluate import EvalConfig, majority


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


def test_eval_config_validation():
    with pytest.raises(ValueError, match=r"^--limit must be >= 0, got -1$"):
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


def test_best_of_n_chooses_among_answered_texts_as_tree_search_does():
    """Seen in review: a formatted text without a number (value 0.3, format alone) outscored five answered texts that
    each agreed with nobody (0.14), so best-of-n answered nothing where tree search's value mode (pick_finished,
    which takes finished rollouts with an answer) answered one of them."""
    from grpo.evaluate import choose

    texts = ["<reasoning>\nthinking\n</reasoning>\n<answer>\nI am not sure\n</answer>"] + [
        f"The answer is {i}</answer>" for i in range(1, 6)]
    lenient = [None, "1", "2", "3", "4", "5"]
    assert choose("best-of-n", texts, lenient, 0.3, ["stop"] * 6) == 1  # the first of the equally valued answers
    assert choose("best-of-n", texts[:1] + ["so", "no"], [None] * 3, 0.3, ["stop"] * 3) == 0  # none answered: best value


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
    (tmp_path / "trees.jsonl.partial").write_text("")  # an interrupted eval's directory (a user walk: it said the above)
    assert run.main(["inspect-tree", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} holds an interrupted eval (trees.jsonl.partial): `run.py eval "
                                       f"--resume --out-dir {tmp_path}` finishes it, or pass {tmp_path / 'trees.jsonl.partial'} "
                                       "for the trees so far\n")


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


def test_majority_does_not_count_answers_cut_by_the_token_limit():
    """Seen (a review): two completions cut mid-reasoning ending '48/2 = 24' outvoted a finished '<answer>72</answer>'
    (gold 72): majority scored 0 where best-of-n, which gives a cut answer no answer as tree search does, scored 1.
    The vote, and sample's majority@n, now count finished answers only."""
    from grpo.evaluate import QuestionResult, choose, summarize

    texts = ["48 + 48 = 96, 96/2 = 48. 48/2 = 24", "so 48/2 = 24", "<reasoning>r</reasoning>\n<answer>\n72\n</answer>"]
    lenient, strict, finish = ["24", "24", "72"], [None, None, "72"], ["length", "length", "stop"]
    assert choose("majority", texts, lenient, 0.3, finish) == 2
    assert choose("majority", texts, lenient, 0.3, ["stop"] * 3) == 0  # finished, the two 24s do outvote it
    assert choose("majority", texts[:2], lenient[:2], 0.3, finish[:2]) == 0  # none finished: the first, as before
    r = QuestionResult(0, "q", "72", texts, strict, lenient, [64, 64, 30], finish, -1, 158, 200)
    s = summarize([r], 1.0)
    assert s["majority_at_n_lenient"] == 1.0 and s["majority_at_n_strict"] == 1.0
    assert s["pass_at_n_lenient"] == 1.0 and abs(s["accuracy_lenient"] - 1 / 3) < 1e-12  # (lenient reads cut texts)
    s = summarize([dataclasses.replace(r, finish=["stop"] * 3)], 1.0)
    assert s["majority_at_n_lenient"] == 0.0 and s["majority_at_n_strict"] == 1.0


def test_sample_prints_each_answer_and_says_what_runs_meanwhile(tiny_ckpt, monkeypatch, capsys):
    """`run.py sample` end to end (a user walk found it silent for minutes on the embedded model: one batch, printed
    when it ends): a line on stderr as it starts, then each question, its completion and its parsed answer."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(["sample", "--model", tiny_ckpt, "--limit", "2", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "sampling 2 answers of up to 4 tokens at once on cpu..." in err
    assert out.count("=== Q") == 2 and out.count("--- completion (") == 2 and out.count(", gold '") == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), whose every write fails with ENOSPC")
def test_a_full_disk_under_the_predictions_names_the_file(tmp_path):
    """A user walk: eval's full-disk line named no file (a failed write() has none)."""
    import torch
    from helpers import tiny_hf_model, tiny_tokenizer

    from data import Problem
    from grpo.evaluate import evaluate
    from model_io.convert import from_hf_model

    path = tmp_path / "predictions.jsonl.partial"
    path.symlink_to("/dev/full")
    model, tok = from_hf_model(tiny_hf_model(dtype=torch.float32)), tiny_tokenizer()
    with pytest.raises(OSError) as e:
        evaluate(model, tok, [Problem("q", "1", "", 0)], EvalConfig(max_new_tokens=2), out_path=path, progress=False)
    assert e.value.filename == str(path) and "No space left" in e.value.strerror


def test_trees_larger_than_the_free_memory_are_one_out_of_memory_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A CLI audit's --mcts-simulations 100000000 allocated the trees page by page until the kernel's OOM killer
    ended the process, with no line of ours (and the machine's other processes at risk): refused before allocating."""
    import mcts.search as S

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert S.available_memory() > 0  # (Linux: read from /proc/meminfo)
    out = tmp_path / "ev"
    assert run.main(["eval", "--model", tiny_ckpt, "--limit", "1", "--max-new-tokens", "2", "--device", "cpu", "--out-dir", str(out)]) == 0
    before = {f: (out / f).read_bytes() for f in ("predictions.jsonl", "summary.json")}
    monkeypatch.setattr(S, "available_memory", lambda: 100)
    capsys.readouterr()
    assert run.main(["eval", "--model", tiny_ckpt, "--search", "mcts", "--n-simulations", "3", "--children", "2",
                     "--step", "tokens:4", "--limit", "1", "--max-new-tokens", "8", "--device", "cpu", "--out-dir", str(out)]) == 2
    assert capsys.readouterr().err == ("error: out of memory (tree search's 1 tree(s) of 7 nodes need 1015 bytes, 100 bytes are "
                                       "free): lower --batch-size (questions at once; each with --n answers, or tree search's "
                                       "--children rows and --n-simulations x --children nodes)\n")
    # refused before the eval cleared the one before it in its --out-dir (seen in a fuzz: its answers were gone, and
    # the line said to --resume an eval that would fail the same way)
    assert {f: (out / f).read_bytes() for f in before} == before and not (out / "predictions.jsonl.partial").exists()


def test_a_step_cap_past_the_answer_cap_costs_nothing(tiny_ckpt, tmp_path, monkeypatch):
    """Seen in a fuzz: --step tokens:3000000000 (or --step-tokens 2000000000) gave each node that many token slots,
    refused as 324 GB of trees; a step is part of one answer, so --max-new-tokens slots are all it can use."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    for step in (["--step", "tokens:3000000000"], ["--step-tokens", "2000000000"]):
        out = tmp_path / step[0].strip("-")
        assert run.main(["eval", "--model", tiny_ckpt, "--search", "mcts", "--n-simulations", "2", "--children", "2", *step,
                         "--limit", "1", "--max-new-tokens", "6", "--device", "cpu", "--out-dir", str(out)]) == 0
        assert all(1 <= n["tokens"] <= 6 for t in (out / "trees.jsonl").read_text().splitlines() for n in json.loads(t)["nodes"][1:])


def test_the_summary_by_hand():
    """summarize() on one question of two answers, worked by hand: a formatted '4' (10 tokens, finished) and a cut
    'so 2+2 = 4' (30 tokens, no strict answer). Scored as the strategy's one chosen answer (final 1) and as
    `sample`'s (final -1, both count)."""
    from grpo.evaluate import QuestionResult, summarize

    texts = ["<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>\n", "so 2+2 = 4"]
    r = QuestionResult(0, "q", "4", texts, ["4", None], ["4", "4"], [10, 30], ["stop", "length"], 1, 40, 52)
    every = {"questions": 1, "answers_per_question": 2.0, "generated_tokens_per_question": 40.0,
             "forward_tokens_per_question": 52.0, "seconds": 2.0, "seconds_per_question": 2.0,
             "seconds_per_generated_token": 0.05,  # 2 s / 40 tokens
             # any answer right; the vote among the finished ones only: '4' (strict and lenient)
             "pass_at_n_strict": 1.0, "pass_at_n_lenient": 1.0, "majority_at_n_strict": 1.0, "majority_at_n_lenient": 1.0}
    assert summarize([r], 2.0) == {**every, "accuracy_strict": 0.0, "accuracy_lenient": 1.0, "format_strict_rate": 0.0,
                                   "format_soft_rate": 0.0, "truncated_rate": 1.0, "generated_tokens_per_answer": 30.0}
    # sample: each answer counts, so rates are over 2 answers: strict 1/2, lenient 2/2, format 1/2, cut 1/2, (10+30)/2 tokens
    assert summarize([dataclasses.replace(r, final=-1)], 2.0) == {
        **every, "accuracy_strict": 0.5, "accuracy_lenient": 1.0, "format_strict_rate": 0.5, "format_soft_rate": 0.5,
        "truncated_rate": 0.5, "generated_tokens_per_answer": 20.0}


def test_an_answer_ended_by_eos_votes():
    """Only a completion cut by the token limit ('length') loses its vote: one ended by the model's EOS ('eos') is
    as finished as one ended by the stop string ('stop')."""
    from grpo.evaluate import choose, finished_answers

    assert finished_answers(["1", "2", "3"], ["eos", "length", "stop"]) == ["1", None, "3"]
    texts = ["so 24", "then 24", "<reasoning>r</reasoning>\n<answer>\n72\n</answer>"]
    assert choose("majority", texts, ["24", "24", "72"], 0.3, ["eos", "eos", "stop"]) == 0  # two 24s outvote one 72


def test_a_resumed_evaluation_counts_the_questions_and_seconds_before_it():
    import torch
    from helpers import tiny_hf_model, tiny_tokenizer

    from grpo.evaluate import QuestionResult, evaluate
    from model_io.convert import from_hf_model

    model, tok = from_hf_model(tiny_hf_model(dtype=torch.float32)), tiny_tokenizer()
    before = QuestionResult(0, "q", "4", ["4"], [None], ["4"], [1], ["stop"], 0, 1, 9, seconds=100.0)
    summary, results = evaluate(model, tok, [], EvalConfig(max_new_tokens=2), done=[before], progress=False)
    assert results == [before] and summary["questions"] == 1 and summary["accuracy_lenient"] == 1.0
    assert summary["seconds"] >= 100.0  # the earlier run's 100 s, plus this call's own


def test_forward_tokens_count_the_prompt_once_and_every_sampled_token():
    import torch
    from helpers import tiny_hf_model, tiny_tokenizer

    from data import Problem, encode_prompts
    from grpo.evaluate import evaluate
    from model_io.convert import from_hf_model

    model, tok = from_hf_model(tiny_hf_model(dtype=torch.float32)), tiny_tokenizer()
    problems = [Problem("What is 2+2?", "4", "", 0), Problem("And 3+3?", "6", "", 1)]
    _, results = evaluate(model, tok, problems, EvalConfig(search="sample", n=2, max_new_tokens=3), progress=False)
    for p, r in zip(problems, results):
        prompt = len(encode_prompts(tok, [p.question])[0])
        assert r.generated_tokens == sum(r.tokens) and r.forward_tokens == prompt + sum(r.tokens), (prompt, r)
