"""bench/compare.py at equal generated tokens: each question reads its samples up to the count nearest in tokens to
what tree search generated on it, from a pool that evaluate's first_sample grows with more of the same samples."""
import importlib.util

import torch
from conftest import ROOT
from helpers import tiny_hf_model, tiny_tokenizer

from data.gsm8k import Problem
from grpo.evaluate import EvalConfig, QuestionResult, evaluate
from model_io.convert import from_hf_model

spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def result(index: int, tokens: list[int], lenient: list[str | None]) -> QuestionResult:
    n = len(tokens)
    return QuestionResult(index, "q", "7", [f"a{i}" for i in range(n)], list(lenient), list(lenient), list(tokens),
                          ["eos"] * n, 0, sum(tokens), 50 + sum(tokens))


def test_nearest_prefix_by_hand():
    # cumulative 100, 250, 330, 500
    assert compare.nearest_prefix([100, 150, 80, 170], 260) == 2  # 250 is 10 off, 330 is 70
    assert compare.nearest_prefix([100, 150, 80, 170], 300) == 3  # 330 is 30 off, 250 is 50
    assert compare.nearest_prefix([100, 150, 80, 170], 290) == 2  # a tie (40 either way): fewer samples
    assert compare.nearest_prefix([100, 150, 80, 170], 10) == 1  # at least one answer
    assert compare.nearest_prefix([100, 150, 80, 170], 9000) == 4  # all of them, still short


def test_more_samples_from_each_questions_mean_length():
    pool = [result(0, [100, 100], ["7", "7"]), result(1, [40, 60], ["1", "2"])]
    # question 0 has 200 of 500 tokens: 300 more at 100 a sample, +10% -> 4; question 1 has 100 of 300: 200 / 50 * 1.1 -> 5
    assert compare.more_samples(pool, [500, 300], max_n=32) == 5
    assert compare.more_samples(pool, [500, 300], max_n=6) == 4  # at most 6 a question in all
    assert compare.more_samples(pool, [150, 100], max_n=32) == 0  # both reached


def test_merged_pool_and_per_question_counts_choose_from_their_own_prefix():
    a = [result(0, [100, 100], ["3", "3"]), result(1, [40], ["1"])]
    b = [result(0, [100, 100], ["7", "7"]), result(1, [50], ["2"])]
    pool = compare.merge_samples(a, b)
    assert pool[0].tokens == [100, 100, 100, 100] and pool[0].lenient == ["3", "3", "7", "7"]
    assert pool[0].generated_tokens == 400 and pool[0].forward_tokens == 50 + 400  # the prompt (50) once
    # question 0 reads 2 samples (majority "3"), question 1 reads both (its majority: the first seen, "1")
    part = compare.prefix_results(pool, [2, 2], "majority", 0.0)
    assert [len(r.completions) for r in part] == [2, 2] and [r.generated_tokens for r in part] == [200, 90]
    assert [r.lenient[r.final] for r in part] == ["3", "1"]
    part = compare.prefix_results(pool, [4, 1], "majority", 0.0)
    assert [r.lenient[r.final] for r in part] == ["3", "1"]  # 2 against 2: the first seen wins
    assert part[0].forward_tokens == 450 and part[1].forward_tokens == 50 + 40


def test_first_sample_draws_more_of_the_same_pool():
    """Three samples at once are the first sample, then two more drawn with first_sample=1 (float64: no rounding
    difference between batch shapes can change a token)."""
    tok = tiny_tokenizer()
    model = from_hf_model(tiny_hf_model("qwen2", dtype=torch.float64)).eval()
    problems = [Problem(f"What is {i} + {i}?", str(2 * i), "", i) for i in range(2)]
    cfg = EvalConfig(search="sample", max_new_tokens=8, batch_size=2, stop="", temperature=1.0)
    _, three = evaluate(model, tok, problems, EvalConfig(**{**cfg.__dict__, "n": 3}), progress=False)
    _, one = evaluate(model, tok, problems, EvalConfig(**{**cfg.__dict__, "n": 1}), progress=False)
    _, two = evaluate(model, tok, problems, EvalConfig(**{**cfg.__dict__, "n": 2}), progress=False, first_sample=1)
    merged = compare.merge_samples(one, two)
    assert [r.completions for r in merged] == [r.completions for r in three]
    assert [r.tokens for r in merged] == [r.tokens for r in three]
    assert len({c for r in three for c in r.completions}) > 2  # the samples differ: the test can tell them apart


def test_the_grid_runs_end_to_end_and_says_which_seconds_are_estimates(tiny_ckpt, tmp_path, monkeypatch):
    """The whole grid on a tiny checkpoint (seconds): every strategy's row, the equal-token rows, and the caption
    that says the sampled rows' seconds are shared out, not measured (a review: they stood beside measured ones)."""
    import json

    from conftest import gsm8k_dir

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "cmp"
    compare.main(["--model", tiny_ckpt, "--limit", "2", "--n", "1,2", "--sims", "1", "--roots", "puct", "--max-new-tokens", "6",
                  "--batch-size", "2", "--out", str(out), "--device", "cpu"])
    md = (out / "compare.md").read_text()
    assert "Seconds: measured for greedy and tree search; for sample, majority and best-of-n, the time of sampling 2 " in md
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("greedy", "1"), ("sample", "n=1"), ("majority", "n=1"), ("best-of-n", "n=1"), ("sample", "n=2"), ("majority", "n=2"),
        ("best-of-n", "n=2"), ("mcts", "sims=1, K=4"), ("majority", "tokens of mcts sims=1, K=4"),
        ("best-of-n", "tokens of mcts sims=1, K=4")]
    assert md.count("\n| ") == 1 + len(rows)  # the header and one line a row


def test_the_grid_on_a_full_disk_is_one_line(tiny_ckpt, tmp_path, monkeypatch):
    """A user walk: compare.py on a full disk ended in a traceback from its first write of compare.json."""
    import errno
    import pathlib

    import pytest
    from conftest import gsm8k_dir

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    real = pathlib.Path.write_text

    def write_text(self, *a, **k):
        if self.name == "compare.json.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        compare.main(["--model", tiny_ckpt, "--limit", "1", "--n", "1", "--sims", "1", "--roots", "puct",
                      "--max-new-tokens", "4", "--batch-size", "1", "--out", str(out), "--device", "cpu"])
    assert str(e.value) == (f"error: cannot write {out / 'compare.json'} (No space left on device): free space there or "
                            "pass another --out; the rows so far are printed above")
    assert not (out / "compare.json.tmp").exists()
