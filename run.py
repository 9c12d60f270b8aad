#!/usr/bin/env python
"""MCTS-augmented GRPO for LLM math reasoning: the command line.

    python run.py eval --limit 50                 # greedy GSM8K accuracy of the embedded default model
    python run.py eval --search sample --n 4      # mean accuracy, pass@4 and majority@4
    python run.py sample --questions 3            # print a few answers

Every command's flags are generated from its config dataclass (defaults shown by --help); the resolved config is
written next to the outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data import DataError, encode_prompts, load_gsm8k, parse_strict
from grpo.evaluate import EvalConfig, evaluate
from model_io import ModelSpecError, SamplingConfig, generate, load


# ---------------------------------------------------------------- config dataclass <-> argparse
def _field_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307 (our own annotations)
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per field of dataclass `cls`, typed from its annotation, help from its metadata."""
    for f in dataclasses.fields(cls):
        t = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + " (default: %(default)s)"
        if t is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=t, default=f.default, metavar=t.__name__.upper(), help=help_)


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for but CUDA is not available here: use --device cpu")
    return torch.device(name)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


# ---------------------------------------------------------------- commands
def cmd_eval(cfg: EvalConfig) -> None:
    device = resolve_device(cfg.device)
    problems = load_gsm8k(cfg.split, cfg.gsm8k)
    problems = problems[: cfg.limit] if cfg.limit else problems
    shots = load_gsm8k("train", cfg.gsm8k)[: cfg.shots] if cfg.shots else []
    model, tok = load(cfg.model, device=device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    partial = out / "predictions.jsonl.partial"
    summary, _ = evaluate(model, tok, problems, cfg, shots, out_path=partial)
    partial.replace(out / "predictions.jsonl")
    summary = {"model": cfg.model or "embedded:SmolLM2-135M-Instruct", "search": cfg.search, "device": str(device), **summary}
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'predictions.jsonl'} and {out / 'summary.json'}")


@dataclass
class SampleConfig:
    model: str | None = field(default=None, metadata={"help": "model spec; default: the embedded SmolLM2-135M-Instruct"})
    questions: int = field(default=3, metadata={"help": "how many GSM8K questions to answer"})
    split: str = field(default="test", metadata={"help": "GSM8K split"})
    temperature: float = field(default=0.7, metadata={"help": "0 for greedy"})
    max_new_tokens: int = field(default=256, metadata={"help": "generated tokens per answer at most"})
    seed: int = field(default=0, metadata={"help": "random seed of the sampler"})
    gsm8k: str | None = field(default=None, metadata={"help": "GSM8K jsonl file or directory; default: $GSM8K_DIR, else the hub"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})


def cmd_sample(cfg: SampleConfig) -> None:
    from data import StopOnText, stop_token_ids

    problems = load_gsm8k(cfg.split, cfg.gsm8k)[: cfg.questions]
    model, tok = load(cfg.model, device=resolve_device(cfg.device))
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          eos_ids=stop_token_ids(tok, model.cfg.eos_token_ids))
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    res = generate(model, encode_prompts(tok, [p.question for p in problems]), scfg, gen,
                   stop=StopOnText(tok, ["</answer>"]), pad_id=tok.pad_token_id)
    for i, p in enumerate(problems):
        text = tok.decode(res.row(i), skip_special_tokens=True)
        print(f"=== Q{p.index}: {p.question}\n--- completion ({int(res.lengths[i])} tokens, {res.finish[i]}):\n{text}\n"
              f"--- parsed {parse_strict(text)!r}, gold {p.answer!r}\n")


COMMANDS = {
    "eval": (EvalConfig, cmd_eval, "GSM8K accuracy of a model (greedy or sampled)"),
    "sample": (SampleConfig, cmd_sample, "print a model's answers to a few GSM8K questions"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_) in COMMANDS.items():
        add_config_args(sub.add_parser(name, help=help_, description=help_), cls)
    args = parser.parse_args(argv)
    cls, fn, _ = COMMANDS[args.command]
    try:
        fn(config_from_args(cls, args))
    except (ModelSpecError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
