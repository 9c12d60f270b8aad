"""Continuing an interrupted `run.py eval` (`--resume`): its saved config, and the questions it had answered.

An eval streams one line per question to OUT/predictions.jsonl.partial (and, for tree search, one tree per
question to OUT/trees.jsonl.partial) and renames them when it ends. A stopped eval (Ctrl-C, a lost machine)
leaves those files: the questions in them are kept, the rest answered, and the finished files are what an
uninterrupted eval writes (each question's answers depend on its own index and the seed, not on its batch).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from data import Problem
from model_io import ModelSpecError
from mcts.inspect import tree_fault
from model_io.checkpoint import write_text_atomic

from .checkpointing import model_of_run
from .evaluate import EvalConfig, QuestionResult
from .out_dir import is_eval_config

PARTIAL, TREES = "predictions.jsonl.partial", "trees.jsonl.partial"
# flags that may differ from the interrupted eval's: they change neither the questions nor any answer
EVAL_RESUME_MAY_CHANGE = ("batch_size", "gsm8k", "resume")


def start_over(out: Path, config_too: bool = False) -> str:
    """The way to begin an eval that cannot be resumed again in its directory (an eval without --resume refuses to
    replace an interrupted one's answers, and a config.json that is not an eval's: out_dir.refuse_to_replace_an_eval)."""
    what = f"{out / PARTIAL} and {out / 'config.json'}" if config_too else str(out / PARTIAL)
    return f"start it over by removing {what} and running the eval without --resume, or in another --out-dir"


def resumed_eval_config(cfg: EvalConfig, given: set[str], out: Path) -> EvalConfig:
    """The interrupted eval's config from OUT/config.json, with the flags given beside --resume that may change.
    A flag that would change the answers is refused in one line, as is an --out-dir holding no interrupted eval."""
    if not (out / PARTIAL).is_file():
        if (out / "predictions.jsonl").is_file():
            raise ValueError(f"--resume: the eval in {out} finished (its predictions.jsonl is whole): nothing to resume")
        raise ValueError(f"--resume: {out} holds no interrupted eval (no {PARTIAL}): run it without --resume")
    names = {f.name for f in fields(EvalConfig)}
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"--resume: {out}/config.json is missing or not JSON ({type(e).__name__}): the interrupted "
                         f"eval's settings are unknown: {start_over(out, True)}") from None
    if not is_eval_config(saved) or not saved.keys() <= names:
        raise ValueError(f"--resume: {out}/config.json is not the config of a `run.py eval`: {start_over(out, True)}")
    lacks = sorted(names - saved.keys() - set(EVAL_RESUME_MAY_CHANGE))  # (eval writes every field: one was deleted)
    if lacks:  # its default is not what the answers so far were made with
        raise ValueError(f"--resume: {out}/config.json lacks {', '.join('--' + k.replace('_', '-') for k in lacks)}: the "
                         f"interrupted eval's settings are unknown: {start_over(out, True)}")
    # --device auto and --precision auto (the command the eval started with, typed again) stand for what the saved
    # config holds: what 'auto' resolved to when it started
    differ = [k for k in sorted(given & names) if k not in EVAL_RESUME_MAY_CHANGE and saved.get(k) != getattr(cfg, k)
              and k != "out_dir" and not (k in ("device", "precision") and getattr(cfg, k) == "auto")
              and not (k == "model" and same_run_model(cfg.model, saved.get(k)))]
    if differ:
        was = ", ".join(f"--{k.replace('_', '-')} (it has {saved.get(k)!r})" for k in differ)
        raise ValueError(f"--resume {out}: {was} would change the answers mid-eval; only --batch-size and --gsm8k may change "
                         f"on resume: leave the others out, or start a new eval in another --out-dir")
    model = saved.get("model")
    held = Path(os.path.expanduser(model)) if isinstance(model, str) and model else None
    if held is not None and held.name == "model" and held.parent.parent.name == "checkpoints" and not held.exists():
        # an eval of a training run records the checkpoint it read; the run, training on, rotates its checkpoints
        # (--keep-checkpoints): those weights are gone, and no other ones give the same answers
        raise ValueError(f"--resume {out}: the checkpoint this eval read, {held.parent}, has since been removed (its "
                         f"training run keeps only its newest --keep-checkpoints): the eval cannot go on with the same "
                         f"weights: {start_over(out)}")
    keep = {k: getattr(cfg, k) for k in given & set(EVAL_RESUME_MAY_CHANGE)}
    try:
        return EvalConfig(**{**saved, **keep, "resume": True, "out_dir": cfg.out_dir})
    except (TypeError, ValueError) as e:
        raise ValueError(f"--resume: {out}/config.json holds a config that cannot run ({e}): "
                         f"{start_over(out)}") from None


def same_run_model(typed: str | None, saved: str | None) -> bool:
    """`--model RUN_DIR` typed again beside --resume, where the eval recorded the checkpoint RUN_DIR stood for when
    it started: the same weights only while that checkpoint is still the run's newest."""
    if not typed or not saved:
        return False
    try:
        held = model_of_run(Path(os.path.expanduser(typed)))
    except ModelSpecError:
        return False
    return held is not None and held.resolve() == Path(os.path.expanduser(saved)).resolve()


def answered(out: Path, with_trees: bool, problems: list[Problem], n_answers: int) -> list[QuestionResult]:
    """The questions the interrupted eval in `out` finished, in order; its partial files cut to exactly them.
    A line cut short by the interruption ends the list (that question is answered again), and so does a
    question whose tree (`with_trees`) never reached trees.jsonl.partial. `problems`: the eval's questions, of
    which the answered ones must be the first, the same question and gold answer at the same index (checked
    before the files are touched: `--gsm8k` may change on resume, and another file's questions are numbered
    0, 1, 2... as well). A whole line that no eval wrote (edited: a field of another type, one added or deleted,
    `n_answers` answers not given) is refused in one line: read as it stands, it would fail the summary after every other answer."""
    lines = (out / PARTIAL).read_text(encoding="utf-8", errors="replace").splitlines()  # (bytes no eval wrote: refused below)
    trees: dict[int, str] = {}
    if with_trees:
        if not (out / TREES).is_file() and (out / "trees.jsonl").is_file():
            (out / "trees.jsonl").replace(out / TREES)  # stopped between the end's two renames: the trees are whole
        if not (out / TREES).is_file():
            raise ValueError(f"--resume: {out} has no {TREES} beside its {PARTIAL}: {start_over(out)}")
        for n, line in enumerate((out / TREES).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                tree = json.loads(line)
            except (ValueError, RecursionError):
                break  # the interrupted last line
            fault = tree_fault(tree)  # a whole line no eval wrote: its summary (log_tree_stats) failed after every answer
            if fault:
                raise ValueError(f"--resume: {out / TREES}:{n} is {fault}: remove it and the lines after it to answer "
                                 f"those questions again, or {start_over(out)}")
            trees.setdefault(tree["index"], line)
    done, kept = [], []
    for line in lines:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            break  # cut short by the interruption
        # a whole line of other fields (one added or deleted by hand) was taken for a cut one, and dropped silently
        bad = other_fields(row)
        q = QuestionResult(**row) if bad is None else None
        bad = bad or malformed(q, n_answers)
        if bad:
            raise ValueError(f"--resume: {out / PARTIAL}:{len(done) + 1} is not a line an eval wrote ({bad}): remove "
                             f"it and the lines after it to answer those questions again, or {start_over(out)}")
        if with_trees and q.index not in trees:
            break
        done.append(q)
        kept.append(line)
    if [(q.index, q.question, q.gold) for q in done] != [(p.index, p.question, p.answer) for p in problems[: len(done)]]:
        raise ValueError(f"--resume: the questions in {out / PARTIAL} are not the first of the eval's split (its data "
                         f"changed since, or --gsm8k names other files?): {start_over(out)}")
    write_text_atomic(out / PARTIAL, "".join(line + "\n" for line in kept))  # a second interruption: old or new
    if with_trees:
        write_text_atomic(out / TREES, "".join(trees[q.index] + "\n" for q in done))
    return done


def other_fields(row) -> str | None:
    """How a parsed predictions line's fields differ from those an eval writes (None: they are the same)."""
    if not isinstance(row, dict):
        return f"a JSON object was expected, not {type(row).__name__}"
    want = {f.name for f in fields(QuestionResult)}
    extra, lacks = sorted(row.keys() - want), sorted(want - row.keys())
    return "; ".join([f"no eval writes {', '.join(extra)}"] * bool(extra) + [f"it lacks {', '.join(lacks)}"] * bool(lacks)) or None


def malformed(q: QuestionResult, n_answers: int) -> str | None:
    """What in a parsed predictions line no eval writes (None: nothing): each field's type, and `n_answers`
    answers, each with its parsed answers, token count and finish reason."""
    def ints(xs):
        return all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)

    per_answer = {"completions": (str,), "strict": (str, type(None)), "lenient": (str, type(None)), "finish": (str,)}
    if not ints([q.index, q.generated_tokens, q.forward_tokens]):
        return "index, generated_tokens and forward_tokens must be counts"
    if not isinstance(q.question, str) or not isinstance(q.gold, str):
        return "question and gold must be text"
    for name, kinds in {**per_answer, "tokens": (int,)}.items():
        xs = getattr(q, name)
        if not isinstance(xs, list) or len(xs) != n_answers:
            return f"{name} must list {n_answers} answer(s)"
        if not all(isinstance(x, kinds) for x in xs) or (name == "tokens" and not ints(xs)):
            return f"{name} holds a value of another type"
    if not isinstance(q.final, int) or isinstance(q.final, bool) or not -1 <= q.final < n_answers:
        return f"final must be an answer's index below {n_answers}, or -1"
    if not isinstance(q.seconds, (int, float)) or isinstance(q.seconds, bool) or not 0 <= q.seconds < float("inf"):
        return "seconds must be a time"
    return None
