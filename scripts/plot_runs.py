"""Learning curves of several `run.py train` runs against generated tokens: reward (every step), GSM8K test
accuracy and answer-format rate (at each evaluation), one PNG, and a markdown table of each run's numbers.

    python3 scripts/plot_runs.py OUT/curves.png runs/plain runs/mcts
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

USAGE = "usage: python3 scripts/plot_runs.py OUT/curves.png RUN_DIR [RUN_DIR ...]"


def refuse(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)  # (sys.exit(message) would exit 1)


def row(line: str):
    """A metrics.jsonl line as its dict; None if it is not one (cut off, garbled, not an object, a value that is not
    a number or null, an evaluation without both accuracies: the table's arithmetic raised on them)."""
    try:
        m = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(m, dict) and "step" in m):  # every row run.py writes has its step
        return None
    numbers = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in m.values())
    accuracies = ("eval/accuracy_strict" in m) == ("eval/accuracy_lenient" in m)
    return m if numbers and isinstance(m["step"], int) and accuracies else None


def read(run: Path) -> list[dict]:
    """A run's metrics rows. A line that is not one is skipped with a note naming it: a run killed mid-write, or
    one still writing, leaves its last line cut off, and the rows before it still plot."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        refuse(f"error: {f} not found: pass run directories of `run.py train`")
    rows = []
    for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = row(line)
        if m is None:
            print(f"note: {f}:{i} is cut off or damaged (not a metrics row): skipped", file=sys.stderr)
        else:
            rows.append(m)
    return rows


def with_metrics(data: dict[str, list[dict]], runs: list[Path]) -> dict[str, list[dict]]:
    """The runs that have logged a step; each one that has not (stopped before its first step) is left out with a
    note, so that the others still plot."""
    kept = {name: ms for name, ms in data.items() if ms}
    if not kept:
        refuse("error: no run has metrics yet: pass runs that have logged at least one step")
    for (name, ms), r in zip(data.items(), runs):
        if not ms:
            print(f"note: {r / 'metrics.jsonl'} has no metrics rows (a run stopped before its first step has none): "
                  f"{name} left out", file=sys.stderr)
    return kept


def labels(runs: list[Path]) -> list[str]:
    """Each run's name in the table and legend: the fewest trailing parts of its path that no other run shares
    (runs/a/plain and runs/b/plain are a/plain and b/plain; keyed by basename alone, one hid the other)."""
    def tail(r: Path, k: int) -> str:
        return str(Path(*r.parts[-k:]))

    names = []
    for i, r in enumerate(runs):
        others = [o for j, o in enumerate(runs) if j != i]
        k = next((k for k in range(1, len(r.parts)) if all(tail(o, k) != tail(r, k) for o in others)), len(r.parts))
        names.append(tail(r, k))
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def nan_for_null(x: float | None) -> float:
    return float("nan") if x is None else x  # (a gap in the curve)


def mean(xs: list[float | None]) -> float:
    """The mean of the values logged (metrics.jsonl writes a non-finite one, a skipped update's, as null)."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def table(data: dict[str, list[dict]], k: int = 3) -> list[str]:
    """One row per run: rewards averaged over its first and last k steps (single steps are noisy), and its first
    and last evaluation (test accuracy and the rate of answers in the <reasoning>/<answer> format)."""
    rows = [f"| run | steps | generated tokens | reward, first {k} steps | reward, last {k} steps | eval accuracy strict / lenient, "
            "first -> last | eval format rate, first -> last |", "|---|---|---|---|---|---|---|"]
    for name, ms in data.items():
        ev = [m for m in ms if "eval/accuracy_strict" in m]
        acc = (f"{ev[0]['eval/accuracy_strict']:.3f} / {ev[0]['eval/accuracy_lenient']:.3f} -> "
               f"{ev[-1]['eval/accuracy_strict']:.3f} / {ev[-1]['eval/accuracy_lenient']:.3f}") if ev else "-"
        fmt = f"{ev[0].get('eval/format_soft_rate', float('nan')):.2f} -> {ev[-1].get('eval/format_soft_rate', float('nan')):.2f}" if ev else "-"
        st = [m for m in ms if "reward" in m]  # training steps (an evaluation of the start is logged as step 0)
        rows.append(f"| {name} | {ms[-1]['step']} | {ms[-1].get('rollout/generated_tokens_total', 0):.0f} | "
                    f"{mean([m['reward'] for m in st[:k]]):.3f} | {mean([m['reward'] for m in st[-k:]]):.3f} | {acc} | {fmt} |")
    return rows


def check(argv: list[str]) -> tuple[Path, list[Path]]:
    """OUT and the run directories, refused in one line where they cannot be meant: OUT comes first, so an OUT that
    is a directory is a run given without one (`plot_runs.py runs/a runs/b` would write runs/a.md, plot runs/b alone
    and save the PNG onto runs/a)."""
    flag = next((a for a in argv if a.startswith("-")), None)
    if flag is not None:
        refuse(f"error: unknown flag {flag}: {USAGE}")
    if len(argv) < 2:
        refuse(f"error: pass OUT and at least one run directory: {USAGE}")
    out, runs = Path(argv[0]), [Path(a) for a in argv[1:]]
    if out.is_dir():
        refuse(f"error: OUT {out} is a directory (the first argument is the PNG to write): {USAGE}")
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):  # the table goes to OUT's name with .md: OUT itself, for a .md
        refuse(f"error: OUT {out} is not a .png, .svg or .pdf (the figure to write; its table goes beside it as .md): {USAGE}")
    if len({r.resolve() for r in runs}) < len(runs):
        refuse("error: a run directory is given twice: pass each run once")
    return out, runs


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    out, runs = check(argv)
    data = with_metrics({name: read(r) for name, r in zip(labels(runs), runs)}, runs)
    rows = table(data)
    try:  # an OUT in a new directory is made, as run.py makes its --out-dir
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        refuse(f"error: cannot make {out.parent} for {out} ({e.strerror}): pass a writable path")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -r bench/requirements.txt)")
        return
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
    for i, (name, ms) in enumerate(data.items()):
        c = f"C{i}"  # one colour per run in every panel (strict accuracy dashed beside lenient)
        st = [m for m in ms if "reward" in m]
        a1.plot([m.get("rollout/generated_tokens_total", m["step"]) for m in st], [nan_for_null(m["reward"]) for m in st],
                marker=".", color=c, label=name)
        ev = [(m.get("rollout/generated_tokens_total", m["step"]), m["eval/accuracy_lenient"], m["eval/accuracy_strict"],
               m.get("eval/format_soft_rate", float("nan"))) for m in ms if "eval/accuracy_strict" in m]
        if ev:
            a2.plot([e[0] for e in ev], [e[1] for e in ev], marker="o", color=c, label=f"{name} (lenient)")
            a2.plot([e[0] for e in ev], [e[2] for e in ev], marker="x", linestyle="--", color=c, label=f"{name} (strict)")
            a3.plot([e[0] for e in ev], [e[3] for e in ev], marker="o", color=c, label=name)
    a1.set(xlabel="generated tokens (rollouts)", ylabel="mean reward per completion", title="training reward")
    a2.set(xlabel="generated tokens (rollouts)", ylabel="GSM8K test accuracy", title="evaluation: accuracy")
    a3.set(xlabel="generated tokens (rollouts)", ylabel="answers in the <reasoning>/<answer> format", title="evaluation: format")
    for a in (a1, a2, a3):
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:  # runs without evaluations leave the evaluation plots empty
            a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)  # (main is also called in-process, by the tests: pyplot keeps every open figure)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
