"""One GRPO step, ours against TRL's GRPOTrainer at identical settings, in one run; prints the ratio last.

    pip install -r bench/requirements.txt
    GSM8K_DIR=../shared/data/gsm8k python3 bench/grpo_step.py --prompts 2 --group 4 --max-new-tokens 64

Same model (the embedded SmolLM2-135M-Instruct; TRL gets an HF-format export of the same float32 weights, since
a GGUF load is flagged as quantized and TRL refuses to train it), same GSM8K prompts and chat template, same G,
completion limit (EOS only for both), micro-batch, beta, learning rate and the same five reward functions. Both
train on the same problems in the same order (ours' seeded order, grpo/batches.py, handed to TRL unshuffled);
sampling draws differ, so completion lengths differ: the time per completion token is printed beside each step time.
Each side runs in its own process (so that peak memory is its own): `--warmup` steps, then `--steps` timed.
Peak memory is the process's maximum resident set size over the training steps (model loading excluded).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/mcts.py must not hide the mcts package


def reset_peak() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM), so that loading, which
    briefly holds a transformers copy of the weights beside ours, is not counted against the training steps."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sides(script: str, sides, args: list[str]) -> dict:
    """Run `script --side S args...` for each side, each in its own process (its peak memory is its own);
    -> {side: the dict it printed on its `RESULT ` line}. A failed side ends the benchmark with its stderr."""
    res = {}
    for side in sides:
        p = subprocess.run([sys.executable, script, "--side", side] + args, capture_output=True, text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        if p.returncode == 2 and p.stderr.strip():  # the side refused its input (argparse): its one line is the news
            print(f"{side}: {p.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            sys.exit(2)  # (as the refusal itself: sys.exit(message) would exit 1)
        if p.returncode or line is None:
            sys.exit(f"{side} failed:\n{p.stderr[-4000:]}")
        res[side] = json.loads(line[7:])
    return res


def run_ours(a) -> dict:
    import torch

    from data import load_gsm8k
    from grpo.config import TrainConfig
    from grpo.trainer import Trainer
    from model_io import load

    torch.manual_seed(a.seed)
    model, tok = load(a.hf_dir)
    cfg = TrainConfig(steps=a.warmup + a.steps, prompts_per_step=a.prompts, group_size=a.group, max_new_tokens=a.max_new_tokens,
                      micro_batch=a.micro_batch, beta=a.beta, lr=a.lr, warmup_steps=0, stop="", eval_every=0, shots=0,
                      save_every=10**6, log_samples=0, seed=a.seed, device="cpu", deterministic=not a.nondeterministic,
                      precision=a.precision)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, model, tok, load_gsm8k("train", a.gsm8k), [], Path(d), progress=False)
        times, lengths = [], []
        reset_peak()
        for _ in range(a.warmup + a.steps):
            t = time.perf_counter()
            m = tr.train_step()
            times.append(time.perf_counter() - t)
            lengths.append(m["completions/mean_length"])
    return {"step_seconds": times[a.warmup:], "mean_completion_length": lengths[a.warmup:]}


def problems_in_our_order(train: list, prompts: int, steps: int, seed: int) -> list:
    """The problems our trainer's first `steps` steps train on, step by step (shots=0: the whole train split, in
    grpo.batches' seeded order): TRL, given them unshuffled, takes the same prompts at each step (it took the
    file's first ones, other prompts than ours, before a review noticed)."""
    from grpo.batches import EpochOrder

    order = EpochOrder(len(train), prompts, seed)
    return [train[i] for s in range(steps) for i in order.step(s)]


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data import build_messages, load_gsm8k
    from grpo.rewards import DEFAULT_REWARDS

    torch.manual_seed(a.seed)
    train = load_gsm8k("train", a.gsm8k)
    probs = problems_in_our_order(train, a.prompts, a.warmup + a.steps, a.seed)  # (TRL reads them unshuffled)
    ds = Dataset.from_list([{"prompt": build_messages(p.question), "answer": p.answer} for p in probs])

    def wrap(name, fn):
        def reward(completions, answer, **_):
            return fn([c[0]["content"] for c in completions], answers=answer)

        reward.__name__ = name
        return reward

    times, lengths = [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            reset_peak()

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    rows = a.prompts * a.group
    with tempfile.TemporaryDirectory() as d:
        args = GRPOConfig(
            output_dir=d, per_device_train_batch_size=a.micro_batch, gradient_accumulation_steps=rows // a.micro_batch,
            num_generations=a.group, max_completion_length=a.max_new_tokens, beta=a.beta, learning_rate=a.lr,
            loss_type="grpo", scale_rewards="group", num_iterations=1, temperature=1.0, top_p=1.0, top_k=0,
            max_steps=a.warmup + a.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            bf16=a.precision == "bf16", seed=a.seed, lr_scheduler_type="constant", max_grad_norm=1.0, adam_beta2=0.99,
            shuffle_dataset=False, log_completions=False, disable_dropout=True,
        )
        model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(a.hf_dir)
        tr = GRPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         reward_funcs=[wrap(n, f) for n, f in DEFAULT_REWARDS.items()], callbacks=[Clock()])
        tr.train()
    return {"step_seconds": times[a.warmup:], "mean_completion_length": lengths[a.warmup:]}


def main(argv=None) -> None:
    from grpo.flags import OneLineParser  # (a usage error in one line, as in run.py)

    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=2, help="B: prompts per step (default: 2)")
    ap.add_argument("--group", type=int, default=4, help="G: completions per prompt (default: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="completion limit (default: 64)")
    ap.add_argument("--micro-batch", type=int, default=4, help="completions per forward/backward (default: 4)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL weight; > 0 makes both run a reference model (default: 0.04)")
    ap.add_argument("--lr", type=float, default=1e-6, help="learning rate (default: 1e-6)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    ap.add_argument("--seed", type=int, default=0, help="default: 0")
    ap.add_argument("--gsm8k", default=None, help="GSM8K file or directory (default: $GSM8K_DIR, else the hub)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: float32, or bf16 autocast over float32 weights (ours: --precision; TRL: bf16=True) (default: fp32)")
    ap.add_argument("--nondeterministic", action="store_true", help="ours without deterministic kernels (default: off, as training runs)")
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.gsm8k is not None and not a.gsm8k.strip():  # (as run.py and the other benches: it read the working directory)
        ap.error("argument --gsm8k: is empty: give a path, or leave the flag out for its default")
    if a.side:  # (flags checked by the parent; the TRL side imports of ours only the parser, the data and the rewards:
        # the parser's modules hold 1.2 MB of its ~4.6 GB peak, docs/RESULTS.md session 28)
        out = run_ours(a) if a.side == "ours" else run_trl(a)
        out["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(out))
        return
    from cli import check_args, user_errors

    check_args(ap, a, at_least_1=("prompts", "group", "max_new_tokens", "micro_batch", "steps"),
               at_least_0=("beta", "lr", "warmup"))
    if a.group < 2:  # (else the side's TrainConfig refuses it, in a traceback, after the export)
        ap.error(f"--group must be >= 2, got {a.group}: GRPO's advantage compares completions of one prompt")
    if (a.prompts * a.group) % a.micro_batch:
        ap.error("prompts x group must be a multiple of --micro-batch (TRL's gradient accumulation needs it)")
    from data import load_gsm8k

    with user_errors(ap):  # a wrong --gsm8k is found before the export and the two sides' model loads
        load_gsm8k("train", a.gsm8k)
    if importlib.util.find_spec("trl") is None:  # found now, not by the TRL side after the export
        ap.error("TRL is not installed: pip install -r bench/requirements.txt")

    import torch
    from machine import copy_bandwidth

    from model_io import export_hf, load

    bw_before = copy_bandwidth(torch.device("cpu"))

    with tempfile.TemporaryDirectory() as d:
        model, tok = load()
        export_hf(model, tok, Path(d) / "hf")  # float32 HF copy of the embedded model (trainable by TRL)
        del model
        res = run_sides(__file__, ("ours", "trl"), ["--hf-dir", str(Path(d) / "hf")] + (sys.argv[1:] if argv is None else argv))
    # a shared machine's speed varies by the hour, and a memory-bound side (decoding a few rows) slows most
    print(f"machine: cpu, {torch.get_num_threads()} threads; copy bandwidth {bw_before / 1e9:.1f} GB/s before the "
          f"two sides ran, {copy_bandwidth(torch.device('cpu')) / 1e9:.1f} GB/s after")
    print(f"settings: B={a.prompts} G={a.group} max_new_tokens={a.max_new_tokens} micro_batch={a.micro_batch} "
          f"beta={a.beta} lr={a.lr} precision={a.precision}; {a.steps} timed steps after {a.warmup} warm-up")
    mean, per_token = {}, {}
    for side, r in res.items():
        mean[side] = sum(r["step_seconds"]) / len(r["step_seconds"])
        length = sum(r["mean_completion_length"]) / max(len(r["mean_completion_length"]), 1)
        # (the same prompts, other draws: a side whose completions ran longer did more work in its step)
        per_token[side] = mean[side] / max(length * a.prompts * a.group, 1e-9)
        print(f"{side:4s}: {mean[side]:.2f} s/step (steps {', '.join(f'{t:.2f}' for t in r['step_seconds'])}; "
              f"mean completion length {length:.1f}; {per_token[side] * 1e3:.1f} ms per completion token); "
              f"peak memory {r['peak_rss_mb']:.0f} MB")
    print(f"peak memory ratio ours/TRL: {res['ours']['peak_rss_mb'] / res['trl']['peak_rss_mb']:.2f}")
    print(f"time per completion token ratio ours/TRL: {per_token['ours'] / per_token['trl']:.2f}")
    print(f"step time ratio ours/TRL: {mean['ours'] / mean['trl']:.2f}")


if __name__ == "__main__":
    main()
