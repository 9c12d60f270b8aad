"""scripts/gpu_summary.py: the GPU run's summary table, from whatever steps have finished."""
import importlib.util
import json

from conftest import ROOT
from helpers import one_line_refusal

spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)


def test_summary_of_a_run_cut_off_after_two_steps(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "copy_gb_per_s": 1800.0}))
    (tmp_path / "2-sampler-b64.log").write_text("device=cuda\ntransformers generate: 100 tokens in 1.00s = 100.0 tokens/s\n"
                                                "ours                 : 100 tokens in 0.10s = 1000.0 tokens/s\n"
                                                "decode step compiled (batch 64): 1.50 ms; step / floor = 9.0\n"
                                                "compiled decode step failed: never printed with the line above\n"
                                                "decode step floor with the KV cache it reads (427 slots x 64 rows, "
                                                "+629.6 MB, 2.34x the weights) and the float32 head: 0.465 ms; step / that floor = 5.9\n"
                                                "rows with identical greedy tokens: 11/64; rows ended by EOS: 0/64\n"
                                                "ratio ours/transformers tokens/s: 10.00\n")
    (tmp_path / "2-sampler-b256.log").write_text("ours: 400 tokens in 0.20s = 2000.0 tokens/s\n")  # (each batch its rows)
    (tmp_path / "steps.txt").write_text("1-env rc=0 seconds=3\n2-sampler-b64 rc=0 seconds=30\n")
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# GPU run: NVIDIA H100 80GB HBM3, ")
    assert "| copy_gb_per_s | 1800.0 |" in text  # the environment's figures, each a row
    assert "| 2-sampler-b256: ours | 400 tokens in 0.20s = 2000.0 tokens/s |" in text
    # the floor with the KV cache, and how many rows the two sides agree on (bf16: they part at near-ties)
    assert ("| 2-sampler-b64: decode step floor with the KV cache it reads (427 slots x 64 rows, +629.6 MB, 2.34x the "
            "weights) and the float32 head | 0.465 ms; step / that floor = 5.9 |") in text
    assert "| 2-sampler-b64: rows with identical greedy tokens | 11/64; rows ended by EOS: 0/64 |" in text
    (tmp_path / "env.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-04"}))
    gpu_summary.main([str(tmp_path)])  # rewritten later by hand: the run's own date (scripts/gpu_env.py records it)
    assert (tmp_path / "summary.md").read_text().startswith("# GPU run: NVIDIA H100 80GB HBM3, 2026-12-04\n")
    assert "| 2-sampler-b64: ours | 100 tokens in 0.10s = 1000.0 tokens/s |" in text
    assert "| 2-sampler-b64: ratio ours/transformers tokens/s | 10.00 |" in text
    assert "| 2-sampler-b64: decode step compiled (batch 64) | 1.50 ms; step / floor = 9.0 |" in text
    assert "| 2-sampler-b64: compiled decode step failed | never printed with the line above |" in text
    assert "2-sampler-b64 rc=0" in text and "GRPO" not in text  # no training yet: no training rows


def test_summary_with_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOTS", "5")  # not read: each evaluation's shots come from its own config.json
    (tmp_path / "env.json").write_text(json.dumps({"device": "gpu"}))
    (tmp_path / "2-decode-ops.log").write_text("eager operations per decode step: 717 (mul 153)\n"
                                               "ratio eager/compiled operations: 2.64\n")
    (tmp_path / "2-attention.log").write_text("device NVIDIA H200, torch.bfloat16\ndecode: 64 rows x 1 queries over 596 keys\n"
                                              "decode enable_gqa: 0.500 ms per call (math)\ndecode stacked: 0.100 ms per call (fused)\n"
                                              "decode enable_gqa / stacked: 5.00x\n")
    (tmp_path / "2-agreement.log").write_text("rows whose first 32 greedy tokens agree: 15/16\nagreement: PASS\n")
    (tmp_path / "2-group-sampling.log").write_text("device=cuda U=8 prompts x G=8 rows\ncopied: 9.10 s (1500.0 tokens/s)\n"
                                                   "shared: 5.00 s (2730.0 tokens/s)\nspeed-up shared/copied: 1.82x\n")
    for name, acc, shots in (("eval-start", 0.1, 0), ("eval-trained", 0.2, 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"search": "greedy", "shots": shots}))
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"questions": 500, "accuracy_strict": acc, "accuracy_lenient": acc + 0.05, "format_soft_rate": 0.5}))
    (tmp_path / "train").mkdir()
    rows = [{"step": 0, "eval/accuracy_strict": 0.0}] + [{"step": i, "reward": i / 10, "step_time": 9.0 if i == 1 else 2.0 + i / 100}
                                                           for i in range(1, 11)]
    (tmp_path / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "compare.json").write_text(json.dumps({"rows": [
        {"strategy": "mcts", "budget": "sims=8, K=4", "accuracy_lenient": 0.25, "generated_tokens_per_question": 900.4}]}))
    (tmp_path / "mcts-static").mkdir()
    (tmp_path / "mcts-static" / "summary.json").write_text(json.dumps(
        {"questions": 16, "seconds_per_question": 1.234, "generated_tokens_per_question": 1500.4, "accuracy_lenient": 0.25}))
    (tmp_path / "1-cuda-tests.log").write_text("..s.\nSKIPPED [1] tests/test_x.py:3: why\n=== 8 passed, 1 skipped in 12.30s ===\n")
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert "| CUDA-only tests (-k cuda: CUDA graphs against eager decoding, fused attention) | 8 passed, 1 skipped in 12.30s |" in text
    assert ("| tree search, --decode static (16 questions): s/question, generated tokens/question, accuracy lenient | "
            "1.23, 1500, 0.250 |") in text and "--decode dynamic" not in text  # that step did not run
    assert "| agreement with CPU float32: rows whose first 32 greedy tokens agree | 15/16 |" in text
    assert "| eager operations per decode step | 717 (mul 153) |" in text
    assert "| ratio eager/compiled operations | 2.64 |" in text
    assert "| masked GQA attention, decode stacked | 0.100 ms per call (fused) |" in text
    assert "| masked GQA attention, decode enable_gqa / stacked | 5.00x |" in text
    assert "| GRPO-shaped sampling, prompt keys/values copied | 9.10 s (1500.0 tokens/s) |" in text
    assert "| GRPO-shaped sampling, prompt keys/values speed-up shared/copied | 1.82x |" in text
    assert "| eval-start accuracy strict / lenient / format rate (500 questions, 0-shot) | 0.100 / 0.150 / 0.50 |" in text
    assert "| eval-trained accuracy strict / lenient / format rate (500 questions, 2-shot) | 0.200 / 0.250 / 0.50 |" in text
    # steps 1-5 average 0.3, steps 6-10 average 0.8; the step-0 row (no reward) is left out
    assert "| GRPO steps / reward, mean of first 5 / of last 5 | 10 / 0.300 / 0.800 |" in text
    assert "| GRPO step time (s) | first: 9.00, mean of the other 9: 2.06 |" in text  # steps 2-10: 2.02 ... 2.10
    assert "| compare mcts sims=8, K=4: accuracy lenient, tokens/question | 0.250, 900 |" in text
    # a grid cut off by its time limit keeps the rows it finished, marked
    assert "step time split" not in text  # metrics from before the split: no row
    # the micro-batch diagnostic, with the split (its first step left out of the means)
    (tmp_path / "train-mb64").mkdir()
    (tmp_path / "train-mb64" / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": i, "reward": 0.5, "step_time": 3.0, "time/rollout": 1.0 + i, "time/logprobs": 0.5, "time/update": 0.25 * i})
        + "\n" for i in (1, 2, 3)))
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert ("| GRPO at --micro-batch 64 (a diagnostic) step time split, mean over steps after the first: rollout / "
            "log-probs / update (s) | 3.50 / 0.50 / 0.62 |") in text  # steps 2-3: (3 + 4) / 2, 0.5, (0.5 + 0.75) / 2
    assert "under the profiler" not in text
    # one GRPO step under the profiler: its first two lines (as grpo/profiling.py writes them)
    (tmp_path / "train-profile" / "profile").mkdir(parents=True)
    (tmp_path / "train-profile" / "profile" / "step_2.txt").write_text(
        "training step 2: 4.000 s wall under the profiler (rollout 1.500 s, logprobs 1.000 s, update 1.400 s)\n"
        "device busy 0.800 s of 4.000 s (20.0%) in 40000 kernels (20.0 us a kernel): the rest ...\n\nby device time (self):\n")
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert ("| GRPO step under the profiler | 4.000 s wall under the profiler (rollout 1.500 s, logprobs 1.000 s, "
            "update 1.400 s) |") in text
    assert "| GRPO step under the profiler, device | device busy 0.800 s of 4.000 s (20.0%) in 40000 kernels" in text
    c = json.loads((tmp_path / "compare" / "compare.json").read_text())
    (tmp_path / "compare" / "compare.json").write_text(json.dumps({**c, "complete": False}))
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert "| compare mcts sims=8, K=4: accuracy lenient, tokens/question (grid cut off before its end) | 0.250, 900 |" in text


def test_an_evaluation_without_its_config_gets_no_shots_label(tmp_path):
    (tmp_path / "eval-start").mkdir()
    (tmp_path / "eval-start" / "summary.json").write_text(json.dumps(
        {"questions": 4, "accuracy_strict": 0.0, "accuracy_lenient": 0.25, "format_soft_rate": 1.0}))
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert "| eval-start accuracy strict / lenient / format rate (4 questions) | 0.000 / 0.250 / 1.00 |" in text


def refusal(argv, capsys) -> str:
    return one_line_refusal(gpu_summary.main, argv, capsys)


def test_a_missing_out_dir_is_one_line(tmp_path, capsys):
    assert refusal([str(tmp_path / "nope")], capsys) == (
        f"error: no directory {str(tmp_path / 'nope')!r}: pass the OUT_DIR of a scripts/gpu_run.sh run")
    assert refusal([""], capsys) == "error: no directory '': pass the OUT_DIR of a scripts/gpu_run.sh run"  # (it wrote ./summary.md)


def test_a_summary_md_it_did_not_write_is_not_replaced(tmp_path, capsys):
    """Seen in a fuzz: run on experiment.sh's OUT_DIR, it replaced that experiment's results table with an empty
    GPU summary."""
    (tmp_path / "summary.md").write_text("# Plain GRPO vs MCTS-GRPO\n")
    assert refusal([str(tmp_path)], capsys) == (f"error: {tmp_path / 'summary.md'} is not a GPU run's summary (it would be "
                                                "replaced): pass the OUT_DIR of a scripts/gpu_run.sh run")
    assert (tmp_path / "summary.md").read_text() == "# Plain GRPO vs MCTS-GRPO\n"
    (tmp_path / "summary.md").unlink()
    gpu_summary.main([str(tmp_path)])
    gpu_summary.main([str(tmp_path)])  # its own summary: rewritten
    assert (tmp_path / "summary.md").read_text().startswith("# GPU run: ?")


def test_unknown_flags_are_refused(tmp_path, capsys):
    assert refusal([str(tmp_path), "--bogus"], capsys) == (
        "error: unknown flag --bogus: usage: python3 scripts/gpu_summary.py OUT_DIR [--print]")
    assert "pass one OUT_DIR (2 given)" in refusal([str(tmp_path), str(tmp_path)], capsys)
    assert not (tmp_path / "summary.md").exists()
    assert "pass one OUT_DIR (0 given)" in refusal(["--print"], capsys)
    gpu_summary.main(["--print", str(tmp_path)])  # --print before OUT_DIR is fine
    assert capsys.readouterr().out == (tmp_path / "summary.md").read_text()  # and prints what it wrote


# A run cut off by its time limit may leave any file half-written: each damaged one is left out (a row or a note
# saying so) and summary.md is still written, with the rest (the summary is what such a run must still leave).
def test_a_cut_off_metrics_line_is_skipped_with_a_note(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.jsonl").write_text(
        '{"step": 1, "reward": 0.5, "step_time": 3.0}\n"a string"\n{"step": 2, "reward": 0.25, "step_time": 2.0}\n{"step": 3, "re')
    gpu_summary.main([str(tmp_path)])
    assert "| GRPO steps / reward, mean of first 2 / of last 2 | 2 / 0.375 / 0.375 |" in (tmp_path / "summary.md").read_text()
    err = capsys.readouterr().err
    assert f"note: {tmp_path}/train/metrics.jsonl:2 is cut off or damaged" in err and "metrics.jsonl:4" in err


def test_an_evaluation_without_its_figures_is_a_damaged_row(tmp_path, capsys):
    (tmp_path / "eval-start").mkdir()
    (tmp_path / "eval-start" / "summary.json").write_text(json.dumps({"questions": 4}))
    (tmp_path / "steps.txt").write_text("3-eval-start rc=124 seconds=60\n")
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert "| eval-start | damaged (KeyError: 'accuracy_strict'), left out |" in text and "3-eval-start rc=124" in text
    assert "note: eval-start is damaged (KeyError: 'accuracy_strict'): left out of the summary" in capsys.readouterr().err


def test_a_log_line_without_a_colon_is_all_figure(tmp_path):
    (tmp_path / "2-sampler-b64.log").write_text("ours: 100 tokens/s\ncompiled decode step skipped\n")
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert "| 2-sampler-b64: ours | 100 tokens/s |" in text and "| 2-sampler-b64: compiled decode step skipped | - |" in text


def test_json_cut_off_or_not_an_object_is_a_damaged_row(tmp_path):
    (tmp_path / "env.json").write_text('{"device": "NVIDIA H1')
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "compare.json").write_text("[]")
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# GPU run: ?, ")
    assert "| environment | damaged (ValueError: env.json: Unterminated string" in text
    assert "| compare | damaged (ValueError: compare.json: not a JSON object), left out |" in text


def test_help_prints_the_usage_and_exits_0(capsys):
    gpu_summary.main(["--help"])  # returns: exit 0, nothing written
    assert "OUT_DIR [--print]" in capsys.readouterr().out


def test_rows_of_later_steps_nulls_and_a_single_step(tmp_path):
    """A skipped update's null reward is left out of the means; the steps are the last row's (a damaged line's row
    is not counted back); a split only where every step after the first has one; a run of one step has no others."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.jsonl").write_text(
        '{"step": 1, "reward": 0.5, "step_time": 3.0}\n{"step": 2, "rew\n{"step": 3, "reward": null, "step_time": 2.0}\n'
        '{"step": 4, "reward": 0.25, "step_time": 1.0, "time/rollout": 0.5, "time/logprobs": 0.25, "time/update": 0.25}\n')
    (tmp_path / "train-mb64").mkdir()
    (tmp_path / "train-mb64" / "metrics.jsonl").write_text(json.dumps(
        {"step": 1, "reward": 0.5, "step_time": 3.0, "time/rollout": 1.0, "time/logprobs": 0.5, "time/update": 0.25}) + "\n")
    (tmp_path / "mcts-dynamic").mkdir()  # the second of the pair
    (tmp_path / "mcts-dynamic" / "summary.json").write_text(json.dumps(
        {"questions": 16, "seconds_per_question": 2.5, "generated_tokens_per_question": 1000.0, "accuracy_lenient": 0.5}))
    (tmp_path / "2-agreement-fp32.log").write_text("rows whose first 32 greedy tokens agree: 16/16\n")
    (tmp_path / "1-cuda-tests.log").write_text("F..\nFAILED tests/test_x.py::test_cuda\n=== 1 failed, 2 passed in 3.00s ===\n")
    (tmp_path / "train-profile" / "profile").mkdir(parents=True)  # on a CPU: no device line after the first
    (tmp_path / "train-profile" / "profile" / "step_2.txt").write_text("training step 2: 4.000 s wall\n\nby host time (self):\n")
    text = "\n".join(gpu_summary.summary(tmp_path))
    assert "| GRPO steps / reward, mean of first 3 / of last 3 | 4 / 0.375 / 0.375 |" in text
    assert "| GRPO step time (s) | first: 3.00, mean of the other 2: 1.50 |" in text
    assert "| GRPO step time split" not in text  # step 3 has none
    assert "| GRPO at --micro-batch 64 (a diagnostic) step time (s) | first: 3.00 |" in text
    assert ("| GRPO at --micro-batch 64 (a diagnostic) step time split, mean over steps after the first: rollout / "
            "log-probs / update (s) | 1.00 / 0.50 / 0.25 |") in text  # its only step, as there is no other
    assert "| tree search, --decode dynamic (16 questions): s/question, generated tokens/question, accuracy lenient | 2.50, 1000, 0.500 |" in text
    assert "| agreement, the GPU in float32 with CPU float32: rows whose first 32 greedy tokens agree | 16/16 |" in text
    assert "| CUDA-only tests (-k cuda: CUDA graphs against eager decoding, fused attention) | 1 failed, 2 passed in 3.00s |" in text
    assert "| GRPO step under the profiler | 4.000 s wall |" in text and "profiler, device" not in text


def test_a_log_cut_mid_character_and_a_null_figure_still_leave_a_summary(tmp_path, capsys):
    (tmp_path / "2-sampler-b64.log").write_bytes("ours: 100 tokens/s\nratio ours/transformers tokens/s: 1\u00b7".encode()[:-1])
    (tmp_path / "eval-start").mkdir()
    (tmp_path / "eval-start" / "summary.json").write_text(json.dumps(
        {"questions": 4, "accuracy_strict": None, "accuracy_lenient": 0.25, "format_soft_rate": 1.0}))
    gpu_summary.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert "| 2-sampler-b64: ours | 100 tokens/s |" in text and "| 2-sampler-b64: ratio ours/transformers tokens/s | 1\ufffd |" in text
    assert "| eval-start | damaged (TypeError: " in text
