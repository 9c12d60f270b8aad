"""bench/agreement.py (the fast-path-vs-CPU check of issue 5) and bench/sampler.py on a tiny model."""
import importlib.util

import torch
from conftest import ROOT, gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

from model_io import save_model
from model_io.convert import from_hf_model
from model_io.sampler import SampleResult

spec = importlib.util.spec_from_file_location("agreement", ROOT / "bench" / "agreement.py")
agreement = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agreement)


def result(rows, lps):
    T = max(map(len, rows))
    toks = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    lp = torch.tensor([l + [0.0] * (T - len(l)) for l in lps])
    return SampleResult(toks, lp, torch.tensor([len(r) for r in rows]), ["length"] * len(rows))


def test_compare_counts_agreeing_rows_and_logprob_gaps_where_rows_agree():
    ref = result([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9]], [[-0.1, -0.2, -0.3, -0.4], [-1.0, -1.0, -1.0, -1.0], [-0.5, -0.5]])
    test = result([[1, 2, 3, 4], [5, 6, 0, 0], [9, 9]], [[-0.1, -0.2, -0.3, -0.45], [-1.0, -1.2, -3.0, -3.0], [-0.5, -0.5]])
    r = agreement.compare(ref, test, tokens=3)
    assert r["agree"] == 2 and r["first_difference"] == [4, 2, 2]  # row 1 differs at its third token
    # compared: 4 + 2 + 2 positions; row 1's third token on is not (the rows condition on different text)
    assert r["compared_logprobs"] == 8 and abs(r["max_logprob_diff"] - 0.2) < 1e-6
    # tolerance 0.05 + 0.02 |logp|: 0.05 at logp -0.4 is inside (0.058), 0.2 at -1.0 is outside (0.07)
    assert r["logprobs_outside_tolerance"] == 1


def test_logprobs_are_judged_against_the_bf16_yardstick_or_the_fixed_tolerance():
    r = dict(max_logprob_diff=0.15, logprobs_outside_tolerance=20, share_outside_tolerance=20 / 735)  # the H200's
    yard = dict(max_logprob_diff=0.181, logprobs_outside_tolerance=23, share_outside_tolerance=23 / 819)  # CPU bf16
    assert agreement.logprobs_pass(r, yard)  # 0.15 <= 2 x 0.181; 2.7% <= 2 x 2.8% + 0.5%
    assert not agreement.logprobs_pass(r, None)  # 20 outside the fixed tolerance
    assert not agreement.logprobs_pass(dict(r, max_logprob_diff=0.37), yard)  # 0.37 > 0.362
    assert not agreement.logprobs_pass(dict(r, share_outside_tolerance=0.062), yard)  # 6.2% > 5.6% + 0.5%
    none_out = dict(max_logprob_diff=0.01, logprobs_outside_tolerance=0, share_outside_tolerance=0.0)
    assert agreement.logprobs_pass(dict(none_out, share_outside_tolerance=0.004), none_out)  # within the slack
    assert not agreement.logprobs_pass(dict(none_out, max_logprob_diff=0.03), none_out)  # 3x the yardstick's max


def test_the_near_tie_limit_grows_with_the_yardstick():
    assert agreement.near_tie_limit(None) == agreement.NEAR_TIE == 0.1
    assert agreement.near_tie_limit(dict(max_logprob_diff=0.02)) == 0.1  # never below the fixed limit
    assert abs(agreement.near_tie_limit(dict(max_logprob_diff=0.128)) - 0.256) < 1e-12  # two log-probs 0.128 off


def test_a_bf16_run_measures_its_yardstick(tmp_path, capsys):
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "m")
    code = agreement.main(["--model", str(tmp_path / "m"), "--device", "cpu", "--dtype", "bfloat16", "--batch", "3",
                           "--tokens", "4", "--max-new-tokens", "8", "--gsm8k", gsm8k_dir(), "--static"])
    out = capsys.readouterr().out
    assert "yardstick, cpu torch.bfloat16 dynamic" in out and "under test / yardstick: max" in out
    assert ("agreement: PASS" in out) == (code == 0)


def test_a_whole_run_passes_against_itself_on_cpu(tmp_path, capsys):
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "m")
    code = agreement.main(["--model", str(tmp_path / "m"), "--device", "cpu", "--batch", "3", "--tokens", "8",
                           "--max-new-tokens", "12", "--gsm8k", gsm8k_dir(), "--static"])
    out = capsys.readouterr().out
    assert code == 0 and "rows whose first 8 greedy tokens agree: 3/3" in out and "agreement: PASS" in out


def test_sampler_bench_takes_one_of_our_checkpoints(tmp_path, capsys):
    """bench/sampler.py compares with transformers: for a checkpoint of ours it reads an HF export of it."""
    spec_s = importlib.util.spec_from_file_location("bench_sampler", ROOT / "bench" / "sampler.py")
    bench = importlib.util.module_from_spec(spec_s)
    spec_s.loader.exec_module(bench)
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "m")
    bench.main(["--model", str(tmp_path / "m"), "--batch", "2", "--max-new-tokens", "6", "--device", "cpu", "--gsm8k", gsm8k_dir()])
    out = capsys.readouterr().out
    assert "rows with identical greedy tokens: 2/2" in out and "ratio ours/transformers tokens/s" in out
