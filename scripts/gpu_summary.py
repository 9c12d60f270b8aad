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
from typing import NoReturn

USAGE = "usage: python3 scripts/gpu_summary.py OUT_DIR [--print]"
SAMPLER_LINES = ("transformers generate:", "ours", "decode step", "compiled decode step", "ratio", "rows with identical")
OPS_LINES = ("eager", "compiled", "ratio eager")
GROUP_LINES = ("copied:", "shared:", "rows with identical", "speed-up")
ATTENTION_LINES = ("decode", "train")
AGREEMENT_LINES = ("reference:", "rows whose first", "log-prob abs difference", "reference model's margin", "yardstick",
                   "under test / yardstick", "agreement:")


# what a damaged step's file raises when read (not JSON, a figure missing or of the wrong type): reported, not fatal
DAMAGE = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def refuse(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)  # (sys.exit(message) would exit 1)


def note(message: str) -> None:
    print(message, file=sys.stderr)


def text(path: Path) -> str:
    return path.read_text(errors="replace")  # a log cut off mid-character (a step killed by its limit) still reads


def load(path: Path) -> dict | None:
    """A step's JSON file; None if the step has not written it. A damaged one (cut off, or not a JSON object)
    raises ValueError, for `guarded` to report."""
    if not path.is_file():
        return None
    try:
        d = json.loads(text(path))
    except ValueError as e:  # (named: a step's rows may come from two files)
        raise ValueError(f"{path.name}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    return d


def read_jsonl(path: Path) -> list[dict]:
    """metrics.jsonl's rows. A line that is not one is skipped with a note naming it: a run cut off by its time
    limit may leave its last line half-written, and the rows before it still count."""
    rows = []
    for i, line in enumerate(text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            note(f"note: {path}:{i} is cut off or damaged (not a metrics row): skipped")
    return rows


def guarded(what: str, make, *args) -> list[str]:
    """make(*args)'s rows; if a file it reads is damaged, one row saying so instead (and a note), so that the rest
    of the summary is still written: a step cut off by the run's time limit may leave a file half-written."""
    try:
        return make(*args)
    except DAMAGE as e:
        return damaged(what, e)


def damaged(what: str, e: Exception) -> list[str]:
    why = f"{type(e).__name__}: {e}".replace("|", "/")  # (a bar would split the table's cell)
    note(f"note: {what} is damaged ({why}): left out of the summary")
    return [f"| {what} | damaged ({why}), left out |"]


def mean(xs: list[float | None]) -> float:
    """The mean of the values logged (metrics.jsonl writes a non-finite one, a skipped update's, as null)."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def log_rows(path: Path, prefixes: tuple[str, ...], label: str = "") -> list[str]:
    """Table rows from a step's log (none if the step has not run): each line that starts with one of `prefixes`,
    split at its first colon into figure and value (a line without one is the figure, with no value)."""
    if not path.is_file():
        return []
    rows = []
    for line in text(path).splitlines():
        if line.startswith(prefixes):  # a line without a colon ("compiled decode step skipped") is all figure
            k, v = line.split(":", 1) if ":" in line else (line, "-")
            rows.append(f"| {label}{k.strip()} | {v.strip()} |")
    return rows


def pytest_rows(path: Path, label: str) -> list[str]:
    """The pytest tally of a step's log ("9 passed, 2 skipped in 12.30s"), its last such line; none if not run."""
    if not path.is_file():
        return []
    for line in reversed(text(path).splitlines()):
        tally = line.strip("= ").strip()
        if re.match(r"^\d+ (passed|failed|skipped|errors?|deselected)\b", tally):
            return [f"| {label} | {tally} |"]
    return []


def eval_rows(out: Path, name: str) -> list[str]:
    s = load(out / name / "summary.json")
    # the shots the evaluation ran with, from its own config.json (not this process's environment, which a
    # rerun of the summary by hand does not share)
    cfg = load(out / name / "config.json") or {}
    shots = f", {cfg['shots']}-shot" if "shots" in cfg else ""
    if not s:
        return []
    return [f"| {name} accuracy strict / lenient / format rate ({s['questions']} questions{shots}) | "
            f"{s['accuracy_strict']:.3f} / {s['accuracy_lenient']:.3f} / {s['format_soft_rate']:.2f} |"]


def train_rows(out: Path, run: str, label: str) -> list[str]:
    metrics = out / run / "metrics.jsonl"
    ms = [x for x in read_jsonl(metrics) if "reward" in x] if metrics.is_file() else []
    if not ms:
        return []
    k = min(5, len(ms))
    lines = [f"| {label} steps / reward, mean of first {k} / of last {k} | {ms[-1]['step']} / "
             f"{mean([x['reward'] for x in ms[:k]]):.3f} / {mean([x['reward'] for x in ms[-k:]]):.3f} |"]
    # the first step carries one-off costs (kernel choice, compiles, CUDA graph captures): apart
    t = [x["step_time"] for x in ms]
    rest = f", mean of the other {len(t) - 1}: {mean(t[1:]):.2f}" if len(t) > 1 else ""
    lines.append(f"| {label} step time (s) | first: {t[0]:.2f}{rest} |")
    later = ms[1:] or ms
    if all("time/update" in x for x in later):  # where the time goes (metrics since 2026-12-04)
        lines.append(f"| {label} step time split, mean over steps after the first: rollout / log-probs / update (s) | "
                     + " / ".join(f"{mean([x[f'time/{p}'] for x in later]):.2f}" for p in ("rollout", "logprobs", "update"))
                     + " |")
    return lines


def profile_rows(out: Path) -> list[str]:
    prof = out / "train-profile" / "profile" / "step_2.txt"  # one GRPO step under torch.profiler (a diagnostic)
    if not prof.is_file():
        return []
    head = text(prof).splitlines()[:2]  # "training step 2: <times>", "device busy <...>: <why>"
    lines = [f"| GRPO step under the profiler | {head[0].split(': ', 1)[-1]} |"]
    if len(head) > 1 and head[1].startswith("device busy"):
        lines.append(f"| GRPO step under the profiler, device | {head[1].split(': ', 1)[0]} |")
    return lines


def compare_rows(out: Path) -> list[str]:
    c = load(out / "compare" / "compare.json") or {}
    cut = " (grid cut off before its end)" if not c.get("complete", True) else ""
    return [f"| compare {r['strategy']} {r['budget']}: accuracy lenient, tokens/question{cut} | "
            f"{r['accuracy_lenient']:.3f}, {r['generated_tokens_per_question']:.0f} |" for r in c.get("rows", [])]


def mcts_rows(out: Path, mode: str) -> list[str]:
    s = load(out / f"mcts-{mode}" / "summary.json")  # tree search's decoding with and without CUDA graphs (a diagnostic)
    if not s:
        return []
    return [f"| tree search, --decode {mode} ({s['questions']} questions): s/question, generated tokens/question, "
            f"accuracy lenient | {s['seconds_per_question']:.2f}, {s['generated_tokens_per_question']:.0f}, "
            f"{s['accuracy_lenient']:.3f} |"]


def summary(out: Path) -> list[str]:
    try:
        env, bad = load(out / "env.json") or {}, []
    except DAMAGE as e:  # the card's name is then unknown, and the rest of the summary still stands
        env, bad = {}, damaged("environment", e)
    # the run's date, as scripts/gpu_env.py recorded it (a summary rewritten by hand later keeps it)
    lines = [f"# GPU run: {env.get('device', '?')}, {env.get('date', datetime.date.today())}", "", "| figure | value |", "|---|---|"]
    lines += bad + [f"| {k} | {v} |" for k, v in env.items()]
    for f in sorted(out.glob("2-sampler-*.log")):
        lines += log_rows(f, SAMPLER_LINES, f"{f.stem}: ")
    lines += log_rows(out / "2-decode-ops.log", OPS_LINES)
    lines += log_rows(out / "2-attention.log", ATTENTION_LINES, "masked GQA attention, ")
    lines += log_rows(out / "2-group-sampling.log", GROUP_LINES, "GRPO-shaped sampling, prompt keys/values ")
    lines += log_rows(out / "2-agreement.log", AGREEMENT_LINES, "agreement with CPU float32: ")
    lines += log_rows(out / "2-agreement-fp32.log", AGREEMENT_LINES, "agreement, the GPU in float32 with CPU float32: ")
    for name in ("eval-start", "eval-trained"):
        lines += guarded(name, eval_rows, out, name)
    for run, label in (("train", "GRPO"), ("train-mb64", "GRPO at --micro-batch 64 (a diagnostic)")):
        lines += guarded(f"{run}/metrics.jsonl", train_rows, out, run, label)
    lines += guarded("train-profile/profile/step_2.txt", profile_rows, out)
    lines += guarded("compare", compare_rows, out)
    for mode in ("static", "dynamic"):
        lines += guarded(f"mcts-{mode}", mcts_rows, out, mode)
    lines += pytest_rows(out / "1-cuda-tests.log", "CUDA-only tests (-k cuda: CUDA graphs against eager decoding, fused attention)")
    steps = out / "steps.txt"
    if steps.is_file():
        lines += ["", "Steps:", "", "```", text(steps).strip(), "```"]
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    flag = next((a for a in argv if a.startswith("-") and a != "--print"), None)
    if flag is not None:
        refuse(f"error: unknown flag {flag}: {USAGE}")
    dirs = [a for a in argv if a != "--print"]
    if len(dirs) != 1:
        refuse(f"error: pass one OUT_DIR ({len(dirs)} given): {USAGE}")
    out = Path(dirs[0])
    if not dirs[0].strip() or not out.is_dir():
        refuse(f"error: no directory {dirs[0]!r}: pass the OUT_DIR of a scripts/gpu_run.sh run")
    mine = out / "summary.md"
    if mine.is_file() and not text(mine).startswith("# GPU run"):  # (experiment.sh writes a summary.md too)
        refuse(f"error: {mine} is not a GPU run's summary (it would be replaced): pass the OUT_DIR of a scripts/gpu_run.sh run")
    lines = summary(out)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if "--print" in argv:
        print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
