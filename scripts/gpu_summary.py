"""summary.md of a scripts/gpu_run.sh run: one table of every figure so far, with the card's name and the date.
scripts/gpu_run.sh runs it after every step, so that a run cut off by a time limit still leaves its summary.

    python3 scripts/gpu_summary.py OUT_DIR [--print]     # writes OUT_DIR/summary.md; --print also prints it
"""
from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

SAMPLER_LINES = ("transformers generate:", "ours", "decode step", "compiled decode step", "ratio", "rows with identical")
OPS_LINES = ("eager", "compiled", "ratio eager")
GROUP_LINES = ("copied:", "shared:", "rows with identical", "speed-up")
ATTENTION_LINES = ("decode", "train")
AGREEMENT_LINES = ("reference:", "rows whose first", "log-prob abs difference", "reference model's margin", "yardstick",
                   "under test / yardstick", "agreement:")


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def log_rows(path: Path, prefixes: tuple[str, ...], label: str = "") -> list[str]:
    """Table rows from a step's log (none if the step has not run): each line that starts with one of `prefixes`,
    split at its first colon into figure and value."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith(prefixes):
            k, v = line.split(":", 1)
            rows.append(f"| {label}{k.strip()} | {v.strip()} |")
    return rows


def pytest_rows(path: Path, label: str) -> list[str]:
    """The pytest tally of a step's log ("9 passed, 2 skipped in 12.30s"), its last such line; none if not run."""
    if not path.is_file():
        return []
    for line in reversed(path.read_text().splitlines()):
        tally = line.strip("= ").strip()
        if re.match(r"^\d+ (passed|failed|skipped|errors?|deselected)\b", tally):
            return [f"| {label} | {tally} |"]
    return []


def summary(out: Path) -> list[str]:
    env = load(out / "env.json") or {}
    # the run's date, as scripts/gpu_env.py recorded it (a summary rewritten by hand later keeps it)
    lines = [f"# GPU run: {env.get('device', '?')}, {env.get('date', datetime.date.today())}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    for f in sorted(out.glob("2-sampler-*.log")):
        lines += log_rows(f, SAMPLER_LINES, f"{f.stem}: ")
    lines += log_rows(out / "2-decode-ops.log", OPS_LINES)
    lines += log_rows(out / "2-attention.log", ATTENTION_LINES, "masked GQA attention, ")
    lines += log_rows(out / "2-group-sampling.log", GROUP_LINES, "GRPO-shaped sampling, prompt keys/values ")
    lines += log_rows(out / "2-agreement.log", AGREEMENT_LINES, "agreement with CPU float32: ")
    lines += log_rows(out / "2-agreement-fp32.log", AGREEMENT_LINES, "agreement, the GPU in float32 with CPU float32: ")
    for name in ("eval-start", "eval-trained"):
        s = load(out / name / "summary.json")
        # the shots the evaluation ran with, from its own config.json (not this process's environment, which a
        # rerun of the summary by hand does not share)
        cfg = load(out / name / "config.json") or {}
        shots = f", {cfg['shots']}-shot" if "shots" in cfg else ""
        if s:
            lines.append(f"| {name} accuracy strict / lenient / format rate ({s['questions']} questions{shots}) | "
                         f"{s['accuracy_strict']:.3f} / {s['accuracy_lenient']:.3f} / {s['format_soft_rate']:.2f} |")
    for run, label in (("train", "GRPO"), ("train-mb64", "GRPO at --micro-batch 64 (a diagnostic)")):
        metrics = out / run / "metrics.jsonl"
        ms = [x for x in (json.loads(l) for l in metrics.read_text().splitlines() if l.strip()) if "reward" in x] \
            if metrics.is_file() else []
        if not ms:
            continue
        k = min(5, len(ms))
        lines.append(f"| {label} steps / reward, mean of first {k} / of last {k} | {ms[-1]['step']} / "
                     f"{mean([x['reward'] for x in ms[:k]]):.3f} / {mean([x['reward'] for x in ms[-k:]]):.3f} |")
        # the first step carries one-off costs (kernel choice, compiles, CUDA graph captures): apart
        t = [x["step_time"] for x in ms]
        rest = f", mean of the other {len(t) - 1}: {mean(t[1:]):.2f}" if len(t) > 1 else ""
        lines.append(f"| {label} step time (s) | first: {t[0]:.2f}{rest} |")
        later = ms[1:] or ms
        if all("time/update" in x for x in later):  # where the time goes (metrics since 2026-12-04)
            lines.append(f"| {label} step time split, mean over steps after the first: rollout / log-probs / update (s) | "
                         + " / ".join(f"{mean([x[f'time/{p}'] for x in later]):.2f}" for p in ("rollout", "logprobs", "update"))
                         + " |")
    prof = out / "train-profile" / "profile" / "step_2.txt"  # one GRPO step under torch.profiler (a diagnostic)
    if prof.is_file():
        head = prof.read_text().splitlines()[:2]  # "training step 2: <times>", "device busy <...>: <why>"
        lines.append(f"| GRPO step under the profiler | {head[0].split(': ', 1)[-1]} |")
        if len(head) > 1 and head[1].startswith("device busy"):
            lines.append(f"| GRPO step under the profiler, device | {head[1].split(': ', 1)[0]} |")
    c = load(out / "compare" / "compare.json")
    cut = " (grid cut off before its end)" if c and not c.get("complete", True) else ""
    for r in (c or {}).get("rows", []):
        lines.append(f"| compare {r['strategy']} {r['budget']}: accuracy lenient, tokens/question{cut} | "
                     f"{r['accuracy_lenient']:.3f}, {r['generated_tokens_per_question']:.0f} |")
    for mode in ("static", "dynamic"):  # tree search's decoding with and without CUDA graphs (a diagnostic)
        s = load(out / f"mcts-{mode}" / "summary.json")
        if s:
            lines.append(f"| tree search, --decode {mode} ({s['questions']} questions): s/question, generated tokens/question, "
                         f"accuracy lenient | {s['seconds_per_question']:.2f}, {s['generated_tokens_per_question']:.0f}, "
                         f"{s['accuracy_lenient']:.3f} |")
    lines += pytest_rows(out / "1-cuda-tests.log", "CUDA-only tests (-k cuda: CUDA graphs against eager decoding, fused attention)")
    steps = out / "steps.txt"
    if steps.is_file():
        lines += ["", "Steps:", "", "```", steps.read_text().strip(), "```"]
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python3 scripts/gpu_summary.py OUT_DIR [--print]")
    out = Path(argv[0])
    if not out.is_dir():
        sys.exit(f"error: no directory {out}: pass the OUT_DIR of a scripts/gpu_run.sh run")
    lines = summary(out)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if "--print" in argv:
        print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
