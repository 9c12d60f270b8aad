"""Learning curves of several `run.py train` runs against generated tokens: reward (every step) and GSM8K test
accuracy (at each evaluation), one PNG, and a markdown table of each run's last numbers.

    python3 scripts/plot_runs.py OUT/curves.png runs/plain runs/mcts
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    if not f.is_file():
        sys.exit(f"error: {f} not found: pass run directories of `run.py train`")
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out, runs = Path(argv[0]), [Path(a) for a in argv[1:]]
    data = {r.name: read(r) for r in runs}
    rows = ["| run | steps | generated tokens | last reward | last eval accuracy (strict) | (lenient) |", "|---|---|---|---|---|---|"]
    for name, ms in data.items():
        ev = [m for m in ms if "eval/accuracy_strict" in m]
        rows.append(f"| {name} | {ms[-1]['step']} | {ms[-1].get('rollout/generated_tokens_total', 0):.0f} | {ms[-1]['reward']:.3f} | "
                    f"{ev[-1]['eval/accuracy_strict'] if ev else float('nan'):.3f} | {ev[-1]['eval/accuracy_lenient'] if ev else float('nan'):.3f} |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -r bench/requirements.txt)")
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, ms in data.items():
        x = [m.get("rollout/generated_tokens_total", m["step"]) for m in ms]
        a1.plot(x, [m["reward"] for m in ms], marker=".", label=name)
        ev = [(m.get("rollout/generated_tokens_total", m["step"]), m["eval/accuracy_lenient"], m["eval/accuracy_strict"]) for m in ms if "eval/accuracy_strict" in m]
        if ev:
            a2.plot([e[0] for e in ev], [e[1] for e in ev], marker="o", label=f"{name} (lenient)")
            a2.plot([e[0] for e in ev], [e[2] for e in ev], marker="x", linestyle="--", label=f"{name} (strict)")
    a1.set(xlabel="generated tokens (rollouts)", ylabel="mean reward per completion", title="training reward")
    a2.set(xlabel="generated tokens (rollouts)", ylabel="GSM8K test accuracy", title="evaluation")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
