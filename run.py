#!/usr/bin/env python
"""MCTS-augmented GRPO for LLM math reasoning: the command line.

    python run.py train                           # GRPO on GSM8K with the embedded default model
    python run.py train --preset smoke            # a tiny run, under 2 minutes on a CPU
    torchrun --nproc_per_node 2 run.py train      # one process per GPU (or CPU processes with gloo)
    python run.py eval --limit 50                 # greedy GSM8K accuracy of the embedded default model
    python run.py eval --search sample --n 4      # mean accuracy, pass@4 and majority@4
    python run.py eval --search mcts --limit 20   # tree search over reasoning steps
    python run.py inspect-tree runs/eval/trees.jsonl
    python run.py sample --limit 3                # print a few answers

Every command's flags are generated from its config dataclass by grpo/flags.py (defaults shown by --help); the
resolved config is written next to the outputs. grpo/out_dir.py makes and checks --out-dir before any slow work.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Ctrl-C while torch imports (its first half second) can be swallowed by numpy's import inside it, leaving numpy
# half-imported: the run then trains for hours and fails at its export (a CLI audit saw it three times). Held until
# the imports are done, then honoured: one line, exit 130.
_EARLY_STOP: list[int] = []
_SIGINT_WAS = signal.getsignal(signal.SIGINT)  # (SIG_IGN for a background job of a script: it stays ignored)
if __name__ == "__main__" and _SIGINT_WAS is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, lambda *_: _EARLY_STOP.append(1))

import torch

from data import DataError, encode_prompts, load_gsm8k, parse_strict
from data.gsm8k import check_one_file, questions_and_shots
from grpo import distributed as D
from grpo.batches import split_shots
from grpo.checkpointing import (check_against_checkpoint, checkpoint_dirs, checkpoints_at_once, disk_note, is_training_run,
                                model_of_run, refuse_incomplete_checkpoints, remove_leftovers, with_checkpoint_fields)
from grpo.config import TrainConfig, apply_preset, check_ranges, check_top_p, resumed_config, small_tree_note, warmup_note
from grpo.eval_resume import answered, resumed_eval_config
from grpo.evaluate import EvalConfig, answers_per_question, check_search_fits, evaluate
from grpo.flags import OneLineParser, add_config_args, config_from_args, given_fields, more_than_asked, note, unused_flags_note
from grpo.out_dir import (EVAL_OUTPUTS, MADE_DIRS, TRAIN_OUTPUTS, clear_outputs, holds_a_model, lets_go, make_out_dir,
                          refuse_foreign_out_dir, remove_made_dirs, take)
from grpo.stops import stop_line, stop_signals
from grpo.limits import TrainingError
from grpo.trainer import Trainer
from mcts.inspect import InspectConfig, log_tree_stats, print_tree
from model_io import ModelSpecError, SamplingConfig, export_hf, generate, load
from model_io.checkpoint import write_text_atomic
from model_io.precision import check_precision, precision_field, resolve_precision, slow_bf16_note, weights_dtype
from model_io.sampler import set_decode_mode


def run_model(spec: str | None) -> str | None:
    """A model spec, where a training run directory (`--model runs/train`) stands for the model it holds now."""
    held = model_of_run(Path(os.path.expanduser(spec))) if spec else None
    if held is None:
        return spec
    print(f"{spec} is a training run: loading {held}", file=sys.stderr)
    return str(held)


def load_spec(spec: str | None, device: torch.device, dtype: torch.dtype):
    """model_io.load of run_model(spec)."""
    return load(run_model(spec), device=device, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    if D.check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for but CUDA is not available here: use --device cpu")
    D.check_cuda_index(torch.device(name), f"--device {name}")
    return torch.device(name)


def check_context(model, tok, questions: list[str], shots, max_new_tokens: int, shots_flag: bool = True) -> None:
    """The longest of these prompts (found by its question's tokens alone: one batched call, not thousands of chat
    templates) plus --max-new-tokens must fit the model's context, checked once the model is loaded and before
    anything is written: past it the KV cache is sized for it (--max-new-tokens 1e8: 51 GB asked for) and RoPE runs
    on positions the model never saw."""
    ctx = model.cfg.max_position_embeddings
    lengths = [len(ids) for ids in tok(list(questions), add_special_tokens=False)["input_ids"]]  # one batched call
    P = len(encode_prompts(tok, [questions[lengths.index(max(lengths))]], shots)[0])  # the longest, in its prompt
    if P >= ctx:
        raise ValueError(f"a prompt of {P} tokens (--shots {len(shots)}) already fills the model's context of {ctx} positions: "
                         + ("lower --shots" if shots else "pass a model with a longer context, or questions that fit it"))
    if P + max_new_tokens > ctx:  # (shots_flag: the command has a --shots for the line to name)
        raise ValueError(f"--max-new-tokens {max_new_tokens} after a prompt of {P} tokens{f' (--shots {len(shots)})' * shots_flag} runs "
                         f"past the model's context of {ctx} positions: lower --max-new-tokens (at most {ctx - P} here){' or --shots' * (shots_flag and bool(shots))}")


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- commands
@lets_go
def cmd_eval(cfg: EvalConfig, given: set[str] = frozenset()) -> None:
    out = Path(cfg.out_dir)
    if cfg.resume:  # the interrupted eval's settings (grpo/eval_resume.py), checked before anything loads
        cfg = resumed_eval_config(cfg, set(given), out)
    try:
        device = resolve_device(cfg.device)
    except ValueError:
        if not cfg.resume:
            raise
        raise ValueError(f"--resume: the eval in {out} ran on {cfg.device}, which this machine lacks: resume it on a machine "
                         f"with one (its answers so far came from there), or start a new eval in another --out-dir") from None
    set_decode_mode(cfg.decode)
    if cfg.resume:
        make_out_dir(out, "--resume --out-dir")  # its partial files are rewritten: a read-only one fails here, in a line
    else:
        refuse_foreign_out_dir(out, "eval")
        make_out_dir(out)
    take(out, "eval")
    if not cfg.resume:
        # config.json (and the summary) name a run directory's checkpoint itself: a resume reads these weights, not
        # the run's newest by then
        cfg = dataclasses.replace(cfg, model=run_model(cfg.model))
    problems, shots = questions_and_shots(cfg.split, cfg.gsm8k, cfg.shots, cfg.limit)
    if not cfg.resume:
        note(more_than_asked(cfg.limit, len(problems), cfg.split))
        note(unused_flags_note(cfg, set(given)))
    precision = resolve_precision(cfg.precision, device)
    note(slow_bf16_note(precision, device))
    # config.json records what 'auto' resolved to: a resumed eval runs on the same kind of device, at the same precision
    cfg = dataclasses.replace(cfg, device=str(device) if cfg.device == "auto" else cfg.device, precision=precision)
    partial = out / "predictions.jsonl.partial"
    trees = out / "trees.jsonl.partial" if cfg.search == "mcts" and cfg.mcts_when == "tree" else None
    done = answered(out, trees is not None, problems, answers_per_question(cfg)) if cfg.resume else []
    model, tok = load_spec(cfg.model, device, weights_dtype(precision))
    check_context(model, tok, [p.question for p in problems], shots, cfg.max_new_tokens)
    check_search_fits(cfg, len(problems))
    if not cfg.resume:
        clear_outputs(out, EVAL_OUTPUTS)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    if done:
        print(f"resuming {out}: {len(done)} of {len(problems)} questions answered before", file=sys.stderr)
    summary, _ = evaluate(model, tok, problems[len(done) :], cfg, shots, out_path=partial, tree_path=trees, done=done)
    # every other output first, the predictions' rename last: an eval stopped in between still has its partial files,
    # so `--resume` finishes it (answering nothing again), instead of a predictions.jsonl without its summary
    if trees:
        shutil.rmtree(out / "tb", ignore_errors=True)  # all of it from the trees file (a resumed end wrote it once already)
        log_tree_stats(trees, out / "tb")
    summary = {"model": cfg.model or "embedded:SmolLM2-135M-Instruct", "search": cfg.search, "device": str(device),
               "precision": precision, **summary}
    write_json(out / "summary.json", summary)
    if trees:
        trees.replace(out / "trees.jsonl")
    partial.replace(out / "predictions.jsonl")
    print(json.dumps(summary, indent=2))
    wrote = [out / "predictions.jsonl", out / "summary.json"] + ([out / "trees.jsonl", out / "tb"] if trees else [])
    print(f"wrote {', '.join(map(str, wrote[:-1]))} and {wrote[-1]}")


@lets_go
def cmd_train(cfg: TrainConfig, given: set[str] = frozenset(), until_step: int | None = None) -> dict:
    """GRPO on the GSM8K train split; `until_step` stops early as a kill would (used by the resume test)."""
    cfg = apply_preset(cfg, set(given))
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if holds_a_model(run_dir):
            raise ValueError(f"--resume {run_dir} is a model directory, not a training run: train from it with --model {run_dir}")
        if not (run_dir / "config.json").is_file():
            if checkpoint_dirs(run_dir):  # each checkpoint keeps a copy of the config it was written with
                raise ValueError(f"--resume {run_dir}: its config.json is missing: restore it from "
                                 f"{checkpoint_dirs(run_dir)[-1] / 'train_config.json'}")
            raise ValueError(f"--resume {run_dir}: no config.json there, so it is not a run directory of `run.py train`")
        if not is_training_run(run_dir):
            raise ValueError(f"--resume {run_dir} is not a run directory of `run.py train` (its config.json is not a training "
                             f"config and it has no checkpoints): pass the --out-dir of the run to continue")
        refuse_incomplete_checkpoints(run_dir, "--resume")
        if not checkpoint_dirs(run_dir):
            raise ValueError(f"--resume {run_dir}: the run stopped before its first checkpoint, so there is nothing to "
                             f"resume: start it over with its train command and --out-dir {run_dir} (without --resume)")
        if "out_dir" in given:  # the run's directory is --resume's: --out-dir may only name it again
            if Path(cfg.out_dir).resolve() != run_dir.resolve():
                raise ValueError(f"--resume {run_dir} continues the run in its own directory, not in --out-dir {cfg.out_dir}: "
                                 f"leave --out-dir out, or train on from its newest checkpoint in a new run: --model {run_dir} "
                                 f"--out-dir {cfg.out_dir}")
            given = set(given) - {"out_dir"}  # (written 'runs/x/', or the run directory moved since it started)
        try:
            saved, why = json.loads((run_dir / "config.json").read_text()), "is not a JSON object"
        except (ValueError, RecursionError) as e:  # (UnicodeDecodeError too; RecursionError: JSON nested past Python's limit)
            saved, why = None, f"is not readable JSON ({e})"
        if not isinstance(saved, dict):  # each checkpoint keeps a copy of the config it was written with
            raise ValueError(f"--resume {run_dir}: its config.json {why}: restore it from "
                             f"{checkpoint_dirs(run_dir)[-1] / 'train_config.json'}")
        legacy = "precision" not in saved  # a run from before --precision: bf16 autocast on a GPU, float32 on a CPU
        if "precision" in given:  # 'auto' is recorded as what it resolved to: compare like with like
            cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, resolve_device(cfg.device)))
        cfg, changed = resumed_config(with_checkpoint_fields(saved, run_dir), cfg, set(given), str(run_dir))
        check_against_checkpoint(saved, run_dir)
    else:
        run_dir, legacy, changed = Path(cfg.out_dir), False, {}
        if checkpoint_dirs(run_dir):
            raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pass another --out-dir")
        refuse_incomplete_checkpoints(run_dir, "--out-dir")  # a restart would clear them
        if (run_dir / "final_hf").is_dir():
            raise ValueError(f"{run_dir} holds a finished run's model (final_hf): pass another --out-dir")
        refuse_foreign_out_dir(run_dir, "train")
    make_out_dir(run_dir, "--resume" if cfg.resume else "--out-dir")  # a file there fails now, not after loading
    take(run_dir, "train")
    check_one_file({"train"} | ({"test"} if cfg.eval_every else set()), "training, and evaluating every --eval-every steps",
                   cfg.gsm8k)
    if not cfg.resume and D.reports():
        note(unused_flags_note(cfg, set(given)), warmup_note(cfg), small_tree_note(cfg))
    if D.reports():  # (the lock is held: no writer is live)
        note(remove_leftovers(run_dir))
    restart = not cfg.resume and is_training_run(run_dir)  # stopped (Ctrl-C, an error) before its first checkpoint
    d, device = D.init_from_env(cfg.device)
    set_decode_mode(cfg.decode)
    try:
        last = _train_in_group(cfg, run_dir, d, device, legacy, changed, until_step, restart)
    except BaseException:
        D.shutdown(d)  # the ranks may be anywhere (one raised, others in a collective): no barrier here
        raise
    D.shutdown(d, wait=True)
    return last


def _train_in_group(cfg: TrainConfig, run_dir: Path, d: D.Dist, device: torch.device, legacy: bool, changed: dict,
                    until_step: int | None, restart: bool = False) -> dict:
    """cmd_train once the process group (if any) is formed: load, resume, train, report."""
    if cfg.prompts_per_step % d.world:  # (each rank samples its own share of the prompts)
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the {d.world} processes")
    # the run's config records the precision 'auto' resolved to here, so a resume on another machine keeps it
    if legacy:
        cfg = dataclasses.replace(cfg, precision="bf16" if device.type == "cuda" else "fp32")
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    torch.manual_seed(cfg.seed)
    train = load_gsm8k("train", cfg.gsm8k)
    split_shots(train, cfg.shots, cfg.prompts_per_step)  # the trainer's own checks, here before the model loads
    test = load_gsm8k("test", cfg.gsm8k) if cfg.eval_every else []
    model, tok = load_spec(cfg.model, device, torch.float32)  # float32 master weights (+ bf16 autocast)
    trainer = Trainer(cfg, model, tok, train, test, run_dir, dist=d, progress=until_step is None)
    check_context(model, tok, [p.question for p in trainer.train_set + trainer.test_set[: cfg.eval_limit]], trainer.shots,
                  cfg.max_new_tokens)
    if cfg.resume:
        if not trainer.resume():
            raise ValueError(f"--resume {run_dir}: no finished checkpoint in {run_dir / 'checkpoints'}")
        if d.main:
            print(f"resumed {run_dir} at step {trainer.step}"
                  + "".join(f"; --{k.replace('_', '-')} {new} (was {old})" for k, (old, new) in changed.items()))
    if restart and d.main:  # once every input has been checked: a refused command leaves the old run as it was
        note(f"{run_dir} holds a run that stopped before its first checkpoint (nothing to resume): starting over there")
        clear_outputs(run_dir, TRAIN_OUTPUTS)
    if d.main and (changed or not cfg.resume):  # what the run is now, for the next resume
        write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    if cfg.resume and trainer.finished():
        if d.main:
            late = not (run_dir / "final_hf" / "config.json").is_file()
            if late:  # stopped (Ctrl-C, a kill) between its last checkpoint and the export: the export is owed
                export_hf(trainer.model, tok, run_dir / "final_hf")
            trainer.evaluate_if_owed()  # (stopped during its final evaluation: that is owed too)
            trainer.log.close()
            print(f"{run_dir} has finished (step {trainer.step} of {cfg.steps}"
                  + (f", token budget {cfg.token_budget} spent" if trainer.step < cfg.steps else "")
                  + f"): nothing to train; its model is {run_dir / 'final_hf'}"
                  + (" (exported now from its last checkpoint: the run stopped before its export)" if late else ""))
        return {}
    if d.main:
        note(slow_bf16_note(cfg.precision, device))  # (a resumed run keeps the precision it recorded)
        more = checkpoints_at_once(trainer.step, cfg.steps, cfg.save_every, cfg.keep_checkpoints, len(checkpoint_dirs(run_dir)))
        note(disk_note(run_dir, trainer.model, more))
        print("config: " + json.dumps(dataclasses.asdict(cfg)))
        trainer.log.text("config", "```\n" + json.dumps(dataclasses.asdict(cfg), indent=2) + "\n```", trainer.step)
        if device.type == "cpu" and until_step is None:
            print(step_estimate(trainer.estimate_step_seconds(), cfg, trainer.step, d.world))
    last = trainer.train(until_step)
    if d.main and until_step is None:
        print(json.dumps(last, indent=2))
        print(f"run directory: {run_dir} (tensorboard --logdir {run_dir / 'tb'})")
    return last


def step_estimate(per_step: float, cfg: TrainConfig, step: int, world: int) -> str:
    """The line said before a CPU run: a step's time, and the whole run's (a default run takes days on a CPU, which
    should be known before the first step rather than worked out from the progress bar)."""
    left = cfg.steps - step
    total = left * per_step / 3600
    limit = (f"; --max-minutes {cfg.max_minutes:g} stops it sooner" if cfg.max_minutes and cfg.max_minutes * 60 < left * per_step
             else "")
    step_time = f"about {max(per_step, 1):.0f} s or less" if per_step >= 0.5 else "under a second"  # (never "0 s")
    minutes = round(total * 60)
    run_time = (f"about {total:.1f} hours or less" if total >= 2 else f"about {minutes} minute{'s' * (minutes != 1)} or less"
                if minutes else "under a minute")
    return (f"estimated time per step on this CPU: {step_time} ({world} process(es), {cfg.prompts_per_step} prompts x "
            f"{cfg.group_size} completions, up to {cfg.max_new_tokens} tokens); the {left} step{'s' * (left != 1)} to go: "
            f"{run_time}, evaluations aside{limit}")


@dataclass
class SampleConfig:
    model: str | None = field(default=None, metadata={"help": "model spec; default: the embedded SmolLM2-135M-Instruct"})
    limit: int = field(default=3, metadata={"help": "answer the first N questions of the split (N >= 1: every question is answered at once)"})
    shots: int = field(default=2, metadata={"help": "k-shot examples from the train split in each prompt (as train and eval)"})
    split: str = field(default="test", metadata={"help": "GSM8K split"})
    temperature: float = field(default=0.7, metadata={"help": "0 for greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=256, metadata={"help": "generated tokens per answer at most"})
    stop: str = field(default="</answer>", metadata={"help": "stop an answer once its text contains this string ('' for EOS only)"})
    seed: int = field(default=0, metadata={"help": "random seed of the sampler"})
    gsm8k: str | None = field(default=None, metadata={"help": "GSM8K directory holding train.jsonl and test.jsonl, or one of those files where one split is enough; default: $GSM8K_DIR, else the hub"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    precision: str = precision_field()

    def __post_init__(self):
        check_precision(self.precision)
        D.check_device(self.device)
        check_ranges(self, at_least_1=("limit", "max_new_tokens"), at_least_0=("shots", "temperature"))
        check_top_p(self.top_p)


def cmd_sample(cfg: SampleConfig) -> None:
    from data import StopOnText, stop_token_ids

    problems, examples = questions_and_shots(cfg.split, cfg.gsm8k, cfg.shots, cfg.limit)
    note(more_than_asked(cfg.limit, len(problems), cfg.split))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    note(slow_bf16_note(precision, device))
    model, tok = load_spec(cfg.model, device, weights_dtype(precision))
    check_context(model, tok, [p.question for p in problems], examples, cfg.max_new_tokens)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          eos_ids=stop_token_ids(tok, model.cfg.eos_token_ids))
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    # one batch, printed when it ends: say what is running meanwhile (minutes on a CPU for 256 tokens)
    print(f"sampling {len(problems)} answer{'s' * (len(problems) != 1)} of up to {cfg.max_new_tokens} tokens at once on "
          f"{device}...", file=sys.stderr, flush=True)
    res = generate(model, encode_prompts(tok, [p.question for p in problems], examples), scfg, gen,
                   stop=StopOnText(tok, [cfg.stop]) if cfg.stop else None, pad_id=tok.pad_token_id)
    for i, p in enumerate(problems):
        text = tok.decode(res.row(i), skip_special_tokens=True)
        print(f"=== Q{p.index}: {p.question}\n--- completion ({int(res.lengths[i])} tokens, {res.finish[i]}):\n{text}\n"
              f"--- parsed {parse_strict(text)!r}, gold {p.answer!r}\n")


COMMANDS = {
    "train": (TrainConfig, cmd_train, "GRPO training on GSM8K (the main job)"),
    "eval": (EvalConfig, cmd_eval, "GSM8K accuracy of a model (greedy or sampled)"),
    "sample": (SampleConfig, cmd_sample, "print a model's answers to a few GSM8K questions"),
    "inspect-tree": (InspectConfig, print_tree, "print a search tree dumped by `eval --search mcts` as an indented text tree"),
}


def main(argv=None) -> int:
    # no abbreviations: a preset must know exactly which flags the user gave (--max-new would hide --max-new-tokens)
    parser = OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_) in COMMANDS.items():
        add_config_args(sub.add_parser(name, help=help_, description=help_, allow_abbrev=False), cls)
    with contextlib.redirect_stderr(sys.stderr if D.reports() else io.StringIO()):
        args, extra = parser.parse_known_args(argv)  # a usage error: rank 0's line alone under torchrun, as below
        if extra:  # named by the command's own parser, which points at its own --help
            sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    cls, fn, _ = COMMANDS[args.command]
    given = given_fields(sys.argv[1:] if argv is None else argv, cls)
    MADE_DIRS.clear()
    with stop_signals():  # Ctrl-C and SIGTERM: one stop, its cleanup not cut short by a second
        try:
            cfg = config_from_args(cls, args)
            fn(cfg, given) if fn in (cmd_train, cmd_eval) else fn(cfg)
        except (ModelSpecError, DataError, ValueError, FileNotFoundError, TrainingError) as e:
            remove_made_dirs()
            if D.reports(e):  # under torchrun every rank meets a bad flag: one line, not one per process
                print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, OSError, KeyboardInterrupt) as e:  # stopped part-way (grpo/stops.py): Ctrl-C, SIGTERM, out of
            remove_made_dirs()                                   # memory, a full disk: one line, and what continues it
            said = stop_line(e, args)
            if said is None:
                raise  # (an unforeseen failure: its traceback, as below)
            line, code, every_rank = said
            if line and (every_rank or D.reports()):
                print(line, file=sys.stderr)
            return code
        except BaseException:  # a bug or a failure nobody foresaw: its traceback, but no empty --out-dir left behind
            remove_made_dirs()
            raise
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _SIGINT_WAS)
    if _EARLY_STOP:
        print("interrupted", file=sys.stderr)  # (before any work: nothing to continue)
        sys.exit(128 + signal.SIGINT)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(D.exit_code(main))  # (a silent rank lets rank 0 say the error first)
