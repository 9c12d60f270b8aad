"""GRPO steps and greedy decoding in float32 against bf16 (`--precision`), side by side in one run; ratios last.

    GSM8K_DIR=../shared/data/gsm8k python3 bench/precision.py --prompts 2 --group 8 --max-new-tokens 256

On a CPU with AMX-BF16 (what `--precision auto` looks for) bf16 should win; without AMX bf16 is emulated and
should lose, which is why `auto` keeps float32 there. The two precisions sample different completions (different
rounding), so besides seconds per step the table gives seconds per completion token, the fairer comparison.
Each precision runs in its own process (peak memory is its own): `--warmup` steps, then `--steps` timed, then
one greedy decode of `--decode-rows` prompts (tokens/s) with the same weights in the same precision as eval.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/mcts.py must not hide the mcts package
from grpo_step import peak_rss_mb, reset_peak, run_sides  # noqa: E402


def run_side(a) -> dict:
    import torch

    from data import encode_prompts, load_gsm8k
    from grpo.config import TrainConfig
    from grpo.trainer import Trainer
    from model_io import SamplingConfig, generate, load
    from model_io.precision import weights_dtype

    torch.manual_seed(a.seed)
    train = load_gsm8k("train", a.gsm8k)
    model, tok = load(a.model, device="cpu", dtype=torch.float32)
    cfg = TrainConfig(steps=a.warmup + a.steps, prompts_per_step=a.prompts, group_size=a.group, max_new_tokens=a.max_new_tokens,
                      micro_batch=a.group, eval_every=0, save_every=10**6, log_samples=0, seed=a.seed, device="cpu",
                      precision=a.side)
    steps = []
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, model, tok, train, [], Path(d), progress=False)
        reset_peak()
        for _ in range(a.warmup + a.steps):
            m = tr.train_step()
            steps.append({"seconds": m["step_time"], "rollout": m["time/rollout"], "tokens": m["rollout/generated_tokens"]})
    # greedy decoding as `run.py eval --precision` runs it: bf16 weights, or float32 ones
    model = model.to(weights_dtype(a.side)).eval()
    prompts = encode_prompts(tok, [p.question for p in train[100 : 100 + a.decode_rows]], train[: a.shots])
    # untimed: the first call after the cast packs the weights for the CPU's linear (model_io/linear.py)
    generate(model, prompts[:1], SamplingConfig(max_new_tokens=2, temperature=0.0, eos_ids=[]))
    t = time.perf_counter()
    res = generate(model, prompts, SamplingConfig(max_new_tokens=a.max_new_tokens, temperature=0.0, eos_ids=[]))
    decode_s = time.perf_counter() - t
    return {"steps": steps[a.warmup:], "decode_tokens_per_s": float(res.lengths.sum()) / decode_s, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    from cli import add_gsm8k, add_model, check_args, parser, user_errors

    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--prompts", type=int, default=2, help="B: prompts per step (default: 2)")
    ap.add_argument("--group", type=int, default=8, help="G: completions per prompt, also the micro-batch (default: 8)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="completion limit, also of the greedy decode (default: 256)")
    ap.add_argument("--shots", type=int, default=2, help="k-shot prompts of the greedy decode (training uses its default, 2) (default: 2)")
    ap.add_argument("--decode-rows", type=int, default=16, help="prompts decoded greedily at once (default: 16)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (default: 2)")
    ap.add_argument("--seed", type=int, default=0, help="default: 0")
    add_gsm8k(ap)
    ap.add_argument("--side", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    check_args(ap, a, at_least_1=("prompts", "group", "max_new_tokens", "decode_rows", "steps"), at_least_0=("shots", "warmup"))
    if a.group < 2:  # (else each side's TrainConfig refuses it, in a traceback)
        ap.error(f"--group must be >= 2, got {a.group}: GRPO's advantage compares completions of one prompt")
    if a.side:
        with user_errors(ap):  # a bad --model, found in the side's process: run_sides reports this one line
            res = run_side(a)
        print("RESULT " + json.dumps(res))
        return
    from data import load_gsm8k

    with user_errors(ap):  # before two processes start
        n = len(load_gsm8k("train", a.gsm8k))
    if a.shots > n:
        ap.error(f"--shots {a.shots}: the train split holds only {n} problems to show")

    from model_io.precision import cpu_has_fast_bf16

    res = run_sides(__file__, ("fp32", "bf16"), sys.argv[1:] if argv is None else argv)
    print(f"settings: B={a.prompts} G={a.group} max_new_tokens={a.max_new_tokens}, {a.steps} timed steps after {a.warmup} "
          f"warm-up; greedy decode of {a.decode_rows} prompts; CPU with AMX-BF16: {cpu_has_fast_bf16()}")
    per_tok = {}
    for side, r in res.items():
        s = r["steps"]
        secs, toks = sum(x["seconds"] for x in s), sum(x["tokens"] for x in s)
        per_tok[side] = secs / toks
        each = ", ".join(f"{x['seconds']:.2f}" for x in s)
        rollout = ", ".join(f"{x['rollout']:.2f}" for x in s)
        print(f"{side}: {secs / len(s):.2f} s/step (steps {each}; rollout {rollout}; {toks / len(s):.0f} completion tokens/step), "
              f"{1e3 * per_tok[side]:.1f} ms per completion token; greedy decode {r['decode_tokens_per_s']:.1f} tokens/s; "
              f"peak memory {r['peak_rss_mb']:.0f} MB")
    print(f"GRPO time per completion token, bf16/fp32: {per_tok['bf16'] / per_tok['fp32']:.2f}")
    print(f"greedy decode tokens/s, bf16/fp32: {res['bf16']['decode_tokens_per_s'] / res['fp32']['decode_tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
