"""How tree search's final answer depends on when its rollouts were scored: the same trees, the answer picked two
ways, side by side. `at creation`: each finished rollout weighted by the value the search gave it (agreement with
the answers found up to its simulation; the choice before session 13); `whole pool`: every finished rollout scored
again against all its tree's answers (what `mcts.search` does now, mcts/interface.py `pick_finished`).

    GSM8K_DIR=../shared/data/gsm8k python3 bench/mcts_answer.py --limit 32

The search runs once, as `run.py eval --search mcts` runs it (2-shot prompts, its temperature and rollout depth); both choices read its records, so they differ only where
the scoring does. Prints accuracy (strict, lenient) and format rates (soft, strict) of both, and how many answers
changed.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (this file must not hide the mcts package)

from tqdm import tqdm  # noqa: E402

from cli import add_device, add_gsm8k, add_model, check_args, check_device, parser, user_errors  # noqa: E402
from data import encode_prompts, parse_lenient, parse_strict  # noqa: E402
from data.gsm8k import questions_and_shots  # noqa: E402
from grpo.evaluate import EvalConfig  # noqa: E402
from grpo.rewards import soft_format_reward_func, strict_format_reward_func  # noqa: E402
from mcts.interface import ANSWER_MODES, ROOT_RULES, pick_finished  # noqa: E402
from mcts.search import search  # noqa: E402
from model_io import load  # noqa: E402


def scores(texts: list[str], golds: list[str]) -> dict[str, float]:
    n = max(len(texts), 1)
    return {"strict": sum(parse_strict(t) == g for t, g in zip(texts, golds)) / n,
            "lenient": sum(parse_lenient(t) == g for t, g in zip(texts, golds)) / n,
            "format_soft": sum(soft_format_reward_func(texts)) / 0.5 / n,
            "format_strict": sum(strict_format_reward_func(texts)) / 0.5 / n}


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--limit", type=int, default=32, help="first N test questions (default: 32)")
    ap.add_argument("--batch", type=int, default=8, help="B: questions searched together (default: 8)")
    ap.add_argument("--simulations", type=int, default=4, help="default: 4")
    ap.add_argument("--children", type=int, default=4, help="K (default: 4)")
    ap.add_argument("--root", default="puct", choices=ROOT_RULES, help="root selection (default: puct)")
    ap.add_argument("--answer", default="vote", choices=[m for m in ANSWER_MODES if m != "visits"],
                    help="final answer by vote or value (default: vote)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="default: 192")
    ap.add_argument("--temperature", type=float, default=EvalConfig.temperature, help=f"default: {EvalConfig.temperature}, as eval")
    ap.add_argument("--rollout-depth", type=int, default=EvalConfig.rollout_depth, help=f"default: {EvalConfig.rollout_depth}, as eval")
    ap.add_argument("--shots", type=int, default=2, help="k-shot examples from the train split (default: 2, as eval)")
    ap.add_argument("--seed", type=int, default=0, help="default: 0")
    add_gsm8k(ap)
    add_device(ap)
    a = ap.parse_args(argv)
    check_args(ap, a, at_least_1=("limit", "batch", "simulations", "children", "max_new_tokens"),
               at_least_0=("shots", "temperature", "rollout_depth"))
    a.device = check_device(ap, a.device)

    with user_errors(ap):
        problems, shots = questions_and_shots("test", a.gsm8k, a.shots, a.limit)  # first: a wrong --gsm8k costs no model load
        model, tok = load(a.model, device=a.device)
    cfg = EvalConfig(search="mcts", n_simulations=a.simulations, children=a.children, max_new_tokens=a.max_new_tokens,
                     mcts_root=a.root, mcts_answer=a.answer, temperature=a.temperature, rollout_depth=a.rollout_depth,
                     shots=a.shots, seed=a.seed).search_config()  # run.py eval's tree search, these flags aside
    golds, now, before, t0 = [], [], [], time.perf_counter()
    for s in tqdm(range(0, len(problems), a.batch), desc="search", unit="batch"):
        batch = problems[s : s + a.batch]
        found = search(model, tok, encode_prompts(tok, [p.question for p in batch], shots), cfg, [p.index for p in batch], a.seed)
        for p, f in zip(batch, found):
            fin = [r for r in f.records if r.finished and r.answer is not None]
            old = pick_finished(fin, [r.value for r in fin], a.answer)
            golds.append(p.answer)
            now.append(f.text)
            before.append(old.text if old else f.text)  # nothing finished: both follow the most visited path
    wall = time.perf_counter() - t0
    print(f"device={a.device} questions={len(problems)} B={a.batch} simulations={a.simulations} K={a.children} "
          f"root={a.root} answer={a.answer} max_new_tokens={a.max_new_tokens} temperature={a.temperature} "
          f"rollout_depth={a.rollout_depth} shots={a.shots} ({wall:.0f} s)")
    print("| final answer from values | accuracy strict | accuracy lenient | format soft | format strict |")
    print("|---|---|---|---|---|")
    for name, texts in (("at creation (before)", before), ("whole pool (now)", now)):
        s = scores(texts, golds)
        print(f"| {name} | {s['strict']:.3f} | {s['lenient']:.3f} | {s['format_soft']:.3f} | {s['format_strict']:.3f} |")
    print(f"answers changed: {sum(x != y for x, y in zip(before, now))} of {len(now)} "
          f"(parsed answer changed: {sum(parse_lenient(x) != parse_lenient(y) for x, y in zip(before, now))})")


if __name__ == "__main__":
    main()
