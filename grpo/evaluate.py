"""GSM8K evaluation: greedy or sampled answers, scored strictly and leniently, written as JSONL + summary.

Strategies (`search`):
  greedy   one answer per question, argmax decoding
  sample   n answers per question at `temperature`; reports mean accuracy, pass@n and majority@n
The trainer calls `evaluate` too, so the accuracy it logs is the number `run.py eval` prints.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from data import Problem, StopOnText, encode_prompts, parse_lenient, parse_strict, stop_token_ids
from model_io import SamplingConfig, Transformer, generate

from .rewards import soft_format_reward_func, strict_format_reward_func

SEARCHES = ("greedy", "sample")


@dataclass
class EvalConfig:
    model: str | None = field(default=None, metadata={"help": "model spec: hub id, HF dir, .gguf file or checkpoint dir; default: the embedded SmolLM2-135M-Instruct"})
    split: str = field(default="test", metadata={"help": "GSM8K split: test or train"})
    limit: int = field(default=0, metadata={"help": "evaluate the first N questions only (0: all)"})
    search: str = field(default="greedy", metadata={"help": f"decoding strategy: {' | '.join(SEARCHES)}"})
    n: int = field(default=1, metadata={"help": "answers per question (search=sample)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (search=sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (search=sample)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens, 0: off (search=sample)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generated tokens per answer at most"})
    stop: str = field(default="</answer>", metadata={"help": "stop an answer once its text contains this string ('' for EOS only)"})
    batch_size: int = field(default=32, metadata={"help": "questions per batch (rows = batch_size * n)"})
    shots: int = field(default=0, metadata={"help": "k-shot examples from the train split in each prompt"})
    seed: int = field(default=0, metadata={"help": "random seed of the sampler"})
    gsm8k: str | None = field(default=None, metadata={"help": "GSM8K jsonl file or directory; default: $GSM8K_DIR, else the hub"})
    out_dir: str = field(default="runs/eval", metadata={"help": "where predictions.jsonl, summary.json and config.json go"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (cuda when available)"})

    def __post_init__(self):
        if self.search not in SEARCHES:
            raise ValueError(f"unknown --search {self.search!r}: use one of {', '.join(SEARCHES)}")
        if self.n < 1 or self.batch_size < 1 or self.max_new_tokens < 1 or self.limit < 0 or self.shots < 0:
            raise ValueError("--n, --batch-size and --max-new-tokens must be >= 1; --limit and --shots >= 0")
        if self.search == "greedy" and self.n != 1:
            raise ValueError("--search greedy gives one answer per question: use --search sample for --n > 1")


@dataclass
class QuestionResult:
    index: int
    question: str
    gold: str
    completions: list[str]
    strict: list[str | None]  # [n] parsed answers
    lenient: list[str | None]
    tokens: list[int]  # [n] generated tokens per answer
    finish: list[str]


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent parsed answer (ties: the one seen first); None if nothing parsed."""
    votes = Counter(a for a in answers if a is not None)
    return max(votes, key=lambda a: (votes[a], -answers.index(a))) if votes else None


def summarize(results: Sequence[QuestionResult], seconds: float, forward_tokens: int) -> dict:
    n_q = len(results)
    n_a = sum(len(r.completions) for r in results)
    gen = sum(sum(r.tokens) for r in results)
    texts = [c for r in results for c in r.completions]
    acc = lambda key: sum(sum(p == r.gold for p in getattr(r, key)) for r in results) / max(n_a, 1)  # noqa: E731
    out = {
        "questions": n_q,
        "answers": n_a,
        "accuracy_strict": acc("strict"),
        "accuracy_lenient": acc("lenient"),
        "format_strict_rate": sum(strict_format_reward_func(texts)) / 0.5 / max(n_a, 1),
        "format_soft_rate": sum(soft_format_reward_func(texts)) / 0.5 / max(n_a, 1),
        "truncated_rate": sum(f == "length" for r in results for f in r.finish) / max(n_a, 1),
        "generated_tokens_per_answer": gen / max(n_a, 1),
        "forward_tokens_per_answer": forward_tokens / max(n_a, 1),
        "seconds": seconds,
        "seconds_per_answer": seconds / max(n_a, 1),
        "seconds_per_token": seconds / max(gen, 1),
    }
    if any(len(r.completions) > 1 for r in results):
        for key in ("strict", "lenient"):
            out[f"pass_at_n_{key}"] = sum(any(p == r.gold for p in getattr(r, key)) for r in results) / max(n_q, 1)
            out[f"majority_at_n_{key}"] = sum(majority(getattr(r, key)) == r.gold for r in results) / max(n_q, 1)
    return out


@torch.no_grad()
def evaluate(
    model: Transformer,
    tokenizer,
    problems: Sequence[Problem],
    cfg: EvalConfig,
    shots: Sequence[Problem] = (),
    out_path: Path | None = None,
    progress: bool = True,
) -> tuple[dict, list[QuestionResult]]:
    """Answer `problems`; returns the summary and per-question results (streamed to `out_path` as JSONL)."""
    n = cfg.n if cfg.search == "sample" else 1
    scfg = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature if cfg.search == "sample" else 0.0,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        eos_ids=stop_token_ids(tokenizer, model.cfg.eos_token_ids),
    )
    stop = StopOnText(tokenizer, [cfg.stop]) if cfg.stop else None
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    results: list[QuestionResult] = []
    forward_tokens = 0
    sink = out_path.open("w") if out_path else None
    bar = tqdm(total=len(problems), desc=f"eval {cfg.search}", unit="q", disable=not progress)
    t0 = time.perf_counter()
    try:
        for s in range(0, len(problems), cfg.batch_size):
            batch = problems[s : s + cfg.batch_size]
            prompts = encode_prompts(tokenizer, [p.question for p in batch], shots)
            res = generate(model, prompts, scfg, gen, n=n, stop=stop, pad_id=tokenizer.pad_token_id)
            forward_tokens += res.forward_tokens
            for b, p in enumerate(batch):
                rows = range(b * n, (b + 1) * n)
                texts = [tokenizer.decode(res.row(r), skip_special_tokens=True) for r in rows]
                qr = QuestionResult(
                    index=p.index, question=p.question, gold=p.answer, completions=texts,
                    strict=[parse_strict(t) for t in texts], lenient=[parse_lenient(t) for t in texts],
                    tokens=[int(res.lengths[r]) for r in rows], finish=[res.finish[r] for r in rows],
                )
                results.append(qr)
                if sink:
                    sink.write(json.dumps(asdict(qr)) + "\n")
            if sink:
                sink.flush()
            bar.update(len(batch))
            done = sum(sum(p == r.gold for p in r.strict) for r in results) / sum(len(r.strict) for r in results)
            bar.set_postfix(acc=f"{done:.3f}")
    finally:
        bar.close()
        if sink:
            sink.close()
    return summarize(results, time.perf_counter() - t0, forward_tokens), results
