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
