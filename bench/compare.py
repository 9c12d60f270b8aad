"""The test-time compute curve: GSM8K accuracy against generated tokens per question, for greedy decoding,
sampling (mean accuracy), majority vote, best-of-n and tree search at several budgets, on the same questions.

    pip install -r bench/requirements.txt        # matplotlib, for the PNG
    GSM8K_DIR=../shared/data/gsm8k python3 bench/compare.py --limit 16 --n 1,4,8 --sims 2,4,8 --out runs/compare

Sampling-based strategies at budget n use the first n of the same max(n) samples per question (one sampling
run), so budgets differ only in how many samples they read. Tree search runs once per simulation budget.
At equal generated tokens (on unless --no-equal-tokens): for each tree-search row, majority vote and best-of-n
again, each question reading its samples in order up to the count whose tokens come nearest to what tree search
generated on that question (budget "tokens of mcts sims=8, K=4"); more samples of the same pool are drawn where
the first max(n) fall short, up to --max-n a question.
A short untimed greedy run comes first, so that one-off start-up costs (kernel selection, CUDA initialisation)
are not charged to the first timed row.
Writes OUT/compare.md (a markdown table), OUT/compare.json and OUT/compare.png (default OUT: runs/compare; the
committed results in docs/compare/ and docs/compare-2shot/ are rewritten only by naming them with --out).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

from cli import add_device, add_gsm8k, add_model, check_args, check_device, parser, user_errors  # noqa: E402
from data.gsm8k import questions_and_shots  # noqa: E402
from grpo.evaluate import EvalConfig, QuestionResult, choose, evaluate, summarize  # noqa: E402
from mcts.interface import ANSWER_MODES  # noqa: E402
from model_io import load  # noqa: E402
from run import check_context  # noqa: E402


def prefix_results(results: list[QuestionResult], n: int | Sequence[int], strategy: str,
                   format_weight: float) -> list[QuestionResult]:
    """The same questions answered from only the first n samples of each (n: one count, or one per question)."""
    counts = [n] * len(results) if isinstance(n, int) else list(n)
    assert len(counts) == len(results), f"{len(counts)} sample counts for {len(results)} questions"
    out = []
    for r, n in zip(results, counts):
        texts, lenient = r.completions[:n], r.lenient[:n]
        out.append(replace(r, completions=texts, strict=r.strict[:n], lenient=lenient, tokens=r.tokens[:n], finish=r.finish[:n],
                           final=choose(strategy, texts, lenient, format_weight, r.finish[:n]), generated_tokens=sum(r.tokens[:n]),
                           forward_tokens=r.forward_tokens - r.generated_tokens + sum(r.tokens[:n])))
    return out


def nearest_prefix(tokens: Sequence[int], budget: int) -> int:
    """How many of the first answers (at least 1) generate, in all, the tokens nearest to `budget` (ties: fewer)."""
    best, gap, total = 1, None, 0
    for i, t in enumerate(tokens, 1):
        total += t
        if gap is None or abs(total - budget) < gap:
            best, gap = i, abs(total - budget)
        if total >= budget:
            break
    return best


def merge_samples(a: list[QuestionResult], b: list[QuestionResult]) -> list[QuestionResult]:
    """Each question's answers in `a`, then its answers in `b` (the same questions, b's answers numbered after a's:
    evaluate's first_sample); the prompt counted once in forward tokens."""
    assert [r.index for r in a] == [r.index for r in b], "the two sample runs answered different questions"
    return [replace(x, completions=x.completions + y.completions, strict=x.strict + y.strict, lenient=x.lenient + y.lenient,
                    tokens=x.tokens + y.tokens, finish=x.finish + y.finish, generated_tokens=x.generated_tokens + y.generated_tokens,
                    forward_tokens=x.forward_tokens + y.generated_tokens, seconds=x.seconds + y.seconds) for x, y in zip(a, b)]


def more_samples(pool: list[QuestionResult], budgets: Sequence[int], max_n: int) -> int:
    """Samples to add to every question so that each one's answers reach its token budget, estimated from its
    answers so far (their mean length, 10% over), with at most max_n answers a question in all (0: none needed)."""
    need = 0
    for r, budget in zip(pool, budgets):
        have = sum(r.tokens)
        if have < budget:
            need = max(need, math.ceil((budget - have) / max(have / len(r.tokens), 1.0) * 1.1))
    return max(0, min(need, max_n - min(len(r.tokens) for r in pool)))


def budgets(ap: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma-separated list of budgets (--n 1,4,8), each >= 1; anything else is one line naming the flag."""
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        ap.error(f"{flag} takes whole numbers >= 1, comma-separated (e.g. 1,4,8); got {text!r}")
    return vals


def plot(rows: list[dict], limit: int, device: str, out: Path) -> bool:
    """OUT/compare.png; False where matplotlib is not installed (no PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -r bench/requirements.txt)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, marker in (("greedy", "s"), ("sample", "o"), ("majority", "^"), ("best-of-n", "v"), ("mcts", "D"), ("mcts-gumbel", "P")):
        pts = sorted((r["generated_tokens_per_question"], r["accuracy_lenient"]) for r in rows if r["strategy"] == strategy)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=strategy)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("generated tokens per question")
    ax.set_ylabel("GSM8K accuracy (lenient: last number)")
    ax.set_title(f"Test-time compute, {limit} questions, {device}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=120)
    print(f"wrote {out / 'compare.png'}")
    return True


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--limit", type=int, default=16, help="test questions (default: 16)")
    ap.add_argument("--n", default="1,4,8", help="sample budgets for sample / majority / best-of-n (default: 1,4,8)")
    ap.add_argument("--sims", default="2,4,8", help="simulation budgets of tree search (default: 2,4,8)")
    ap.add_argument("--roots", default="puct,gumbel", help="tree search root selections to run, puct and/or gumbel (default: puct,gumbel)")
    ap.add_argument("--children", type=int, default=4, help="K of tree search (default: 4)")
    ap.add_argument("--rollout-depth", type=int, default=3, help="default: 3")
    ap.add_argument("--mcts-answer", default="vote", choices=ANSWER_MODES,
                    help="tree search's final answer: vote (a majority rule: compare with majority), value (best-of-n's rule) "
                         "or visits (default: vote)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="per answer, every strategy (default: 192)")
    ap.add_argument("--temperature", type=float, default=0.7, help="default: 0.7")
    ap.add_argument("--batch-size", type=int, default=16, help="default: 16")
    ap.add_argument("--shots", type=int, default=2, help="k-shot examples from the train split in each prompt (default: 2, as eval)")
    add_gsm8k(ap)
    # runs/, not docs/: a run with other settings must not overwrite the committed results in docs/compare*/
    ap.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    add_device(ap)
    ap.add_argument("--equal-tokens", action=argparse.BooleanOptionalAction, default=True,
                    help="also majority vote and best-of-n at each tree-search row's generated tokens, question by question (default: on)")
    ap.add_argument("--max-n", type=int, default=32, help="samples a question at most for --equal-tokens (default: 32)")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT/compare.png from OUT/compare.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.replot:
        src = out / "compare.json"
        if not src.is_file():
            ap.error(f"--replot: no {src}: pass the --out of an earlier run of this script")
        try:
            saved = json.loads(src.read_text())
            rows, limit, device = saved["rows"], saved["settings"]["limit"], saved["settings"]["device"]
            if not (isinstance(rows, list) and all(isinstance(r, dict) and isinstance(r.get("strategy"), str) and all(
                    isinstance(r.get(k), (int, float)) for k in ("generated_tokens_per_question", "accuracy_lenient")) for r in rows)):
                raise TypeError("its rows are not the rows this script writes")  # (plot's arithmetic raised on them)
        except (ValueError, KeyError, TypeError) as e:
            ap.error(f"--replot: {src} is not a compare.json written by this script ({type(e).__name__}: {e})")
        try:
            importlib.import_module("matplotlib")  # (the PNG is --replot's one output: without it, an error, not exit 0)
        except ImportError:
            ap.error("--replot draws OUT/compare.png with matplotlib, which is not installed: pip install -r bench/requirements.txt")
        plot(rows, limit, device, out)
        return
    ns, sims = budgets(ap, "--n", a.n), budgets(ap, "--sims", a.sims)
    roots = [r for r in a.roots.split(",") if r]
    if not roots or any(r not in ("puct", "gumbel") for r in roots):
        ap.error(f"--roots takes puct and/or gumbel, comma-separated; got {a.roots!r}")
    check_args(ap, a, at_least_1=("limit", "max_n"))
    if a.equal_tokens and a.max_n < max(ns):  # (the pool already holds max(n) a question: the cap would be broken)
        ap.error(f"--max-n {a.max_n} is below the largest --n ({max(ns)}): the equal-token rows read from the n={max(ns)} "
                 f"samples already drawn; raise --max-n to at least {max(ns)}")
    a.device = check_device(ap, a.device)
    try:  # the remaining flags are EvalConfig's, checked (and named) there, before anything loads
        base = EvalConfig(limit=a.limit, max_new_tokens=a.max_new_tokens, temperature=a.temperature, batch_size=a.batch_size,
                          children=a.children, rollout_depth=a.rollout_depth, shots=a.shots, mcts_answer=a.mcts_answer)
        # each row's own settings too (--temperature 0 with n > 1 failed after the model loaded and the greedy row ran)
        replace(base, search="sample", n=max(ns))
        for root in roots:
            replace(base, search="mcts", n_simulations=max(sims), mcts_root=root)
    except ValueError as e:
        ap.error(str(e))
    made = not out.exists()
    try:  # before the model loads: a wrong --out must not cost a run
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out} cannot be made ({e.strerror}): pass a writable directory")

    try:
        with user_errors(ap):
            # first: a wrong --gsm8k costs no model load; as eval: --shots beyond the train split is refused, and
            # zero-shot needs no train split (a test.jsonl alone serves)
            problems, shots = questions_and_shots("test", a.gsm8k, a.shots, a.limit)
            model, tok = load(a.model, device=a.device)
        try:  # as eval refuses it: past the context the KV cache is sized for it, and RoPE runs on unseen positions
            check_context(model, tok, [p.question for p in problems], shots, a.max_new_tokens)
        except ValueError as e:
            ap.error(str(e))
    except SystemExit:
        if made:  # (an --out this run made stays only once it holds something)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    # untimed: the first call pays one-off costs (CUDA context, kernel choice, allocator growth) that were counted
    # in the greedy row's seconds, the first timed, making greedy look several times slower per token than sampling
    evaluate(model, tok, problems[:2], replace(base, search="greedy", max_new_tokens=8), shots, progress=False)
    rows = []

    def write(complete: bool) -> None:  # atomically: a grid cut off (a time limit) keeps every row it finished
        tmp = out / "compare.json.tmp"
        try:
            tmp.write_text(json.dumps({"settings": vars(a), "complete": complete, "rows": rows}, indent=2) + "\n")
            tmp.replace(out / "compare.json")
        except OSError as e:  # a full disk, a read-only directory: one line, not a traceback (the rows are printed)
            tmp.unlink(missing_ok=True)
            sys.exit(f"error: cannot write {out / 'compare.json'} ({e.strerror}): free space there or pass another --out; "
                     "the rows so far are printed above")

    def add(strategy: str, budget: str, summary: dict, **extra) -> None:
        rows.append({"strategy": strategy, "budget": budget, **{k: summary[k] for k in (
            "accuracy_strict", "accuracy_lenient", "format_soft_rate", "generated_tokens_per_question",
            "forward_tokens_per_question", "seconds_per_question", "seconds_per_generated_token")}, **extra})
        print(json.dumps(rows[-1]), flush=True)
        write(complete=False)

    s, _ = evaluate(model, tok, problems, replace(base, search="greedy"), shots, progress=False)
    add("greedy", "1", s)
    t = time.perf_counter()
    s, sampled = evaluate(model, tok, problems, replace(base, search="sample", n=max(ns)), shots, progress=False)
    sample_s = time.perf_counter() - t
    per_sample = sample_s / max(sum(r.generated_tokens for r in sampled), 1)
    for n in ns:
        for strategy in ("sample", "majority", "best-of-n"):
            part = prefix_results(sampled, n, strategy, base.format_weight)
            summ = summarize(part, per_sample * sum(r.generated_tokens for r in part))  # time pro rata of tokens
            add(strategy, f"n={n}", summ)
    trees = []  # (strategy, budget, per-question results) of each tree-search row
    for root in roots:
        for k in sims:
            s, found = evaluate(model, tok, problems, replace(base, search="mcts", n_simulations=k, mcts_root=root), shots, progress=False)
            trees.append(("mcts" if root == "puct" else "mcts-gumbel", f"sims={k}, K={a.children}", found))
            add(*trees[-1][:2], s)
    if a.equal_tokens and trees:
        # question by question, the samples that generate what each tree generated on that question (the pool
        # grown where the first max(n) samples fall short): the baselines at equal generated tokens
        need = [max(f[i].generated_tokens for *_, f in trees) for i in range(len(sampled))]  # [questions]
        extra = more_samples(sampled, need, a.max_n)
        if extra:
            t = time.perf_counter()
            _, more = evaluate(model, tok, problems, replace(base, search="sample", n=extra), shots, progress=False,
                               first_sample=max(ns))
            sample_s += time.perf_counter() - t
            sampled = merge_samples(sampled, more)
            per_sample = sample_s / max(sum(r.generated_tokens for r in sampled), 1)
        for strategy_t, budget_t, found in trees:
            assert [r.index for r in found] == [r.index for r in sampled]
            counts = [nearest_prefix(r.tokens, f.generated_tokens) for r, f in zip(sampled, found)]
            short = sum(c == len(r.tokens) and sum(r.tokens) < f.generated_tokens for r, f, c in zip(sampled, found, counts))
            for strategy in ("majority", "best-of-n"):
                part = prefix_results(sampled, counts, strategy, base.format_weight)
                add(strategy, f"tokens of {strategy_t} {budget_t}", summarize(part, per_sample * sum(r.generated_tokens for r in part)),
                    samples_per_question=sum(counts) / len(counts), questions_short=short)

    write(complete=True)
    lines = [f"GSM8K test, first {a.limit} questions, {a.shots}-shot, {a.device}, max {a.max_new_tokens} new tokens per answer, "
             f"temperature {a.temperature}; tree search K={a.children}, rollout depth {a.rollout_depth}, answer by {a.mcts_answer} (mcts: PUCT at the root; "
             f"mcts-gumbel: Gumbel + Sequential Halving at the root)."
             + (" Budget \"tokens of ...\": each question's first samples, as many as come nearest in tokens to what that tree "
                "search generated on it." if a.equal_tokens and trees else "")
             + f" Seconds: measured for greedy and tree search; for sample, majority and best-of-n, the time of sampling "
               f"{max(ns)} answers a question (and any more drawn for the equal-token rows) shared out by generated tokens, "
               f"an estimate, low for small n (answers sampled in one large batch cost less each than in a small one).", "",
             "| strategy | budget | accuracy (strict) | accuracy (lenient) | soft format | generated tokens / question | forward tokens / question | s / question |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['budget']} | {r['accuracy_strict']:.3f} | {r['accuracy_lenient']:.3f} | "
                     f"{r['format_soft_rate']:.2f} | {r['generated_tokens_per_question']:.0f} | {r['forward_tokens_per_question']:.0f} | "
                     f"{r['seconds_per_question']:.3g} |")  # (3 figures: a GPU's are hundredths of a second)
    for r in rows:
        if "samples_per_question" in r and r["strategy"] == "majority":
            lines.append(f"\n{r['budget']}: {r['samples_per_question']:.1f} samples a question on average; "
                         f"{r['questions_short']} question(s) used all {len(sampled[0].tokens)} of "
                         "theirs and still fell short of the tree's tokens.")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}")
    if not plot(rows, a.limit, a.device, out) and (out / "compare.png").is_file():  # it showed an earlier run's rows
        (out / "compare.png").unlink()
        print(f"removed {out / 'compare.png'}: it plotted an earlier run of this script")


if __name__ == "__main__":
    main()
