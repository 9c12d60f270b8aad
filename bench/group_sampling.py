"""GRPO-shaped sampling, the prompt's keys/values shared by its G rows against copied to each, in one run.

    GSM8K_DIR=../shared/data/gsm8k python3 bench/group_sampling.py --prompts 8 --group 8 --max-new-tokens 64

U prompts (the train split's, with the trainer's 2 worked examples: ~330 tokens each), G completions each,
greedy, EOS only, as `generate(n=G)` samples them for GRPO (grpo/rollout.py): once with every row attending to
its own copy of its prompt's keys/values (`share_prompt=False`, the plain fork), once with the G rows reading one
copy in place (model_io/shared_kv.py). The two sides alternate, `--reps` times each, and the best time of each
is kept. Greedy rows should come out token-identical (the two attentions round differently in the last bits,
so a near-tie between two tokens may rarely go the other way): the count is printed. The ratio is last.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402

from data import encode_prompts, load_gsm8k, stop_token_ids  # noqa: E402
from model_io import SamplingConfig, generate, load  # noqa: E402
from cli import add_device, add_gsm8k, add_model, check_args, check_device, check_fits, parser, user_errors  # noqa: E402
from machine import copy_bandwidth  # noqa: E402


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--prompts", type=int, default=8, help="U: prompts (default: 8, as run.py train)")
    ap.add_argument("--group", type=int, default=8, help="G: completions per prompt (default: 8, as run.py train)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="default: 64")
    ap.add_argument("--shots", type=int, default=2, help="worked examples in each prompt (default: 2, as run.py train)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each side, alternating; the best is kept (default: 2)")
    add_gsm8k(ap)
    add_device(ap)
    args = ap.parse_args(argv)
    check_args(ap, args, at_least_1=("prompts", "group", "max_new_tokens", "reps"), at_least_0=("shots",))
    args.device = check_device(ap, args.device)

    with user_errors(ap):
        train = load_gsm8k("train", args.gsm8k)  # first: a wrong --gsm8k costs no model load
        model, tok = load(args.model, device=args.device)
    problems = train[args.shots : args.shots + args.prompts]
    check_fits(ap, model, tok, [p.question for p in problems], train[: args.shots], args.max_new_tokens)
    prompts = encode_prompts(tok, [p.question for p in problems], train[: args.shots])
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0, eos_ids=stop_token_ids(tok, model.cfg.eos_token_ids))
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    U, G = len(prompts), args.group
    print(f"device={dev} threads={torch.get_num_threads()} U={U} prompts x G={G} rows, max_new_tokens="
          f"{args.max_new_tokens}, prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))}; "
          f"copy bandwidth {copy_bandwidth(dev) / 1e9:.1f} GB/s")

    # untimed warm-up of both sides: the process's first calls (kernel loads, allocator, a GPU's first graph) would
    # otherwise fall in the first timed side's run, which with --reps 1 is its only one
    warm = SamplingConfig(max_new_tokens=4, temperature=0.0, eos_ids=cfg.eos_ids)
    for shared in (False, True):
        generate(model, prompts[:1], warm, n=min(G, 2), pad_id=tok.pad_token_id, share_prompt=shared)
    best, out = {}, {}
    for _ in range(args.reps):
        for shared in (False, True):
            sync()
            t = time.perf_counter()
            res = generate(model, prompts, cfg, n=G, pad_id=tok.pad_token_id, share_prompt=shared)
            sync()
            el = time.perf_counter() - t
            best[shared] = min(best.get(shared, el), el)
            out[shared] = res
    a, b = out[False], out[True]
    same = sum(a.row(i) == b.row(i) for i in range(U * G))
    tokens = {False: int(a.lengths.sum()), True: int(b.lengths.sum())}  # each side its own (near-ties may part rows)
    for shared, name in ((False, "copied"), (True, "shared")):
        print(f"{name}: {best[shared]:.2f} s ({tokens[shared] / best[shared]:.1f} tokens/s)")
    print(f"rows with identical greedy tokens: {same}/{U * G}; mean completion {tokens[False] / (U * G):.1f} tokens "
          f"(copied), {tokens[True] / (U * G):.1f} (shared)")
    print(f"speed-up shared/copied: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
