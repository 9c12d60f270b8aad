"""GSM8K evaluation under a decoding strategy, scored strictly and leniently, written as JSONL + summary.

Strategies (`search`), all comparable at their generated-token cost per question:
  greedy      one answer, argmax decoding
  sample      n sampled answers; reports their mean accuracy, pass@n and majority@n
  majority    n sampled answers; the answer is the majority vote (self-consistency, Wang et al. 2023) of the
              lenient answers of those that finished (one cut by the token limit has no answer, as in best-of-n's
              and tree search's value), and of the texts giving the winning number one in the format if any
              (majority_at_n_strict in `sample`'s summary is another count: a vote among the strict answers)
  best-of-n   n sampled answers; the answer is the one with the highest value, the same gold-free value
              as tree search uses (format + agreement with the other answers), among the finished ones with a
              number if there are any, as tree search's final answer is chosen
  mcts        tree search over reasoning steps (mcts/search.py); with --mcts-when always | every:K | entropy:H,
              plain decoding that searches only at decision points (mcts/lookahead.py)
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
from mcts.lookahead import When, lookahead_decode
from mcts.interface import ANSWER_MODES, ROOT_RULES, Candidates, SearchConfig, self_consistency_value
from mcts.search import parse_answer, search, tree_sizes
from model_io import SamplingConfig, Transformer, generate
from model_io.precision import check_precision, precision_field
from model_io.sampler import check_decode_mode, row_rng

from .config import check_ranges, check_top_p, check_types
from .metrics import naming
from .rewards import soft_format_reward_func, strict_format_reward_func

SEARCHES = ("greedy", "sample", "majority", "best-of-n", "mcts")


@dataclass
class EvalConfig:
    model: str | None = field(default=None, metadata={"help": "model spec: hub id, HF dir, .gguf file, checkpoint dir or training run dir; default: the embedded SmolLM2-135M-Instruct"})
    split: str = field(default="test", metadata={"help": "GSM8K split: test or train (train: after the --shots questions that serve as the prompt's examples)"})
    limit: int = field(default=0, metadata={"help": "evaluate the first N questions only (0: all)"})
    search: str = field(default="greedy", metadata={"help": f"decoding strategy: {' | '.join(SEARCHES)}"})
    n: int = field(default=1, metadata={"help": "answers sampled per question (sample, majority, best-of-n)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (all but greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (all but greedy)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens, 0: off (sample, majority, best-of-n)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generated tokens per answer at most"})
    stop: str = field(default="</answer>", metadata={"help": "stop an answer once its text contains this string ('' for EOS only)"})
    n_simulations: int = field(default=8, metadata={"help": "mcts: simulations per question"})
    children: int = field(default=4, metadata={"help": "mcts: K, continuations sampled per expansion"})
    c_puct: float = field(default=1.0, metadata={"help": "mcts: exploration weight of PUCT (visits count K per simulation: about c_puct/sqrt(K) in AlphaZero's terms, mcts/tree.py)"})
    mcts_root: str = field(default="puct", metadata={"help": f"mcts: root selection, {' | '.join(ROOT_RULES)} (Gumbel scores with Sequential Halving, Danihelka et al. 2022; PUCT below the root)"})
    step: str = field(default="newline", metadata={"help": "mcts: a node is a line ('newline', capped at --step-tokens) or exactly N tokens ('tokens:N')"})
    step_tokens: int = field(default=48, metadata={"help": "mcts: cap on a newline step"})
    rollout_depth: int = field(default=4, metadata={"help": "mcts: a new node's step and its rollout run at most 1 + this many step caps of tokens together (a short step leaves the rollout the rest), or to the answer's end"})
    mcts_answer: str = field(default="vote", metadata={"help": f"mcts: final answer by {' | '.join(ANSWER_MODES)}"})
    mcts_rescore: bool = field(default=False, metadata={"help": "mcts: before each simulation's selection, score every finished "
                                                               "rollout again against its tree's answers so far and rebuild the tree's values "
                                                               "(off: a rollout keeps the agreement it had when created)"})
    mcts_when: str = field(default="tree", metadata={"help": "mcts: 'tree' (one search builds the whole answer), or lookahead decoding that searches only at decision points: always | every:K | entropy:H"})
    fallback_p: float = field(default=0.0, metadata={"help": "mcts lookahead: probability of decoding a decision step plainly instead of searching"})
    format_weight: float = field(default=0.3, metadata={"help": "mcts, best-of-n: value = w * format + (1 - w) * agreement"})
    batch_size: int = field(default=32, metadata={"help": "questions per batch"})
    shots: int = field(default=2, metadata={"help": "k-shot examples from the train split in each prompt (train's default too, "
                                            "so a trained policy is evaluated on the prompts it learned on; 0: zero-shot)"})
    seed: int = field(default=0, metadata={"help": "random seed of the sampler"})
    gsm8k: str | None = field(default=None, metadata={"help": "GSM8K directory holding train.jsonl and test.jsonl, or one of those files where one split is enough; default: $GSM8K_DIR, else the hub"})
    out_dir: str = field(default="runs/eval", metadata={"help": "where predictions.jsonl, summary.json, config.json (and trees.jsonl for mcts with --mcts-when tree) go; an earlier eval's outputs there are replaced"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted eval in --out-dir: its config, the questions "
                                                        "it answered kept, the rest answered (only --batch-size and --gsm8k may change)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (cuda when available)"})
    decode: str = field(default="auto", metadata={"help": "sampling path: auto (static shapes and CUDA graphs on a GPU, "
                                                          "dynamic on a CPU), static, dynamic, or compiled (static with the decode step "
                                                          "through torch.compile: fewer kernels per step on a GPU, ~12 s to compile on a CPU)"})
    precision: str = precision_field()

    def __post_init__(self):
        check_types(self)
        check_decode_mode(self.decode)
        check_precision(self.precision)
        if self.search not in SEARCHES:
            raise ValueError(f"unknown --search {self.search!r}: use one of {', '.join(SEARCHES)}")
        check_ranges(self, at_least_1=("n", "batch_size", "max_new_tokens", "n_simulations", "children", "step_tokens"),
                     at_least_0=("limit", "shots", "top_k", "temperature", "c_puct", "rollout_depth"),
                     in_0_1=("format_weight", "fallback_p"))
        check_top_p(self.top_p)
        if self.search in ("greedy", "mcts") and self.n != 1:
            raise ValueError(f"--search {self.search} gives one answer per question: --n is for sample, majority, best-of-n")
        if self.search in ("majority", "best-of-n") and self.n < 2:  # one sample: --search sample, under another name
            raise ValueError(f"--search {self.search} chooses among --n answers per question: give --n >= 2 (e.g. --n 8)")
        if self.search != "greedy" and self.temperature == 0 and self.n > 1:
            raise ValueError(f"--temperature 0 draws the same answer all --n {self.n} times: give --temperature > 0 "
                             "(e.g. 0.7), or use --search greedy")
        if self.search == "mcts" and self.temperature == 0 and self.children > 1:  # K equal steps merge into one child
            raise ValueError(f"--temperature 0 samples the same step for all --children {self.children}: give --temperature > 0 "
                             "(e.g. 0.7), or use --search greedy")
        # flags that look as if they applied to tree search but do not (config.json would record them as if they had)
        if self.search == "mcts" and self.top_k:
            raise ValueError(f"--top-k {self.top_k} is not used by --search mcts (it samples with --temperature and --top-p): "
                             f"drop --top-k, or use --search sample, majority or best-of-n")
        if self.search == "mcts" and self.mcts_when == "tree" and self.fallback_p:
            raise ValueError(f"--fallback-p {self.fallback_p} applies to lookahead decoding only: add --mcts-when always, "
                             f"every:K or entropy:H, or drop --fallback-p")
        # the tree-search flags are checked whatever the search: a wrong value is a mistake even where unused
        self.search_config()
        if self.mcts_when != "tree":
            When.parse(self.mcts_when)

    def search_config(self) -> SearchConfig:
        return SearchConfig(n_simulations=self.n_simulations, children=self.children, c_puct=self.c_puct, root=self.mcts_root, step=self.step,
                            step_tokens=self.step_tokens, rollout_depth=self.rollout_depth, temperature=self.temperature,
                            top_p=self.top_p, max_new_tokens=self.max_new_tokens, answer=self.mcts_answer,
                            format_weight=self.format_weight, stop=self.stop, rescore=self.mcts_rescore)


@dataclass
class QuestionResult:
    index: int
    question: str
    gold: str
    completions: list[str]  # [n] (one for greedy and mcts)
    strict: list[str | None]  # [n] parsed answers
    lenient: list[str | None]
    tokens: list[int]  # [n] tokens per completion
    finish: list[str]
    final: int = 0  # the strategy's answer: index into completions (-1: sample, where every completion counts)
    generated_tokens: int = 0  # all tokens sampled for this question (for tree search: every rollout)
    # tokens through the model for it, every strategy counted alike: the prompt once (tree search: also each path
    # it extends), then every sampled token, the last of each answer or rollout included though it is never run
    # (one token over the exact count per answer, the same rule for all strategies so that they compare)
    forward_tokens: int = 0
    seconds: float = 0.0  # its share of its batch's wall time (a resumed eval's summary adds the earlier run's)


def answers_per_question(cfg: EvalConfig) -> int:
    """The answers a strategy gives per question: n sampled ones, or one (greedy, tree search)."""
    return cfg.n if cfg.search in ("sample", "majority", "best-of-n") else 1


def one_answer(p: Problem, text: str, n_tokens: int, finish: str, generated: int, forward: int) -> QuestionResult:
    """The result of a strategy that gives one answer per question (tree search, lookahead decoding)."""
    return QuestionResult(p.index, p.question, p.answer, [text], [parse_strict(text)], [parse_lenient(text)], [n_tokens],
                          [finish], 0, generated, forward)


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent parsed answer (ties: the one seen first); None if nothing parsed."""
    votes = Counter(a for a in answers if a is not None)
    return max(votes, key=lambda a: (votes[a], -answers.index(a))) if votes else None


def finished_answers(answers: Sequence[str | None], finish: Sequence[str]) -> list[str | None]:
    """The answers that vote: a completion cut by the token limit has none. The last number of a cut text is an
    intermediate result of reasoning that never ended, not an answer; best-of-n and tree search score cut answers
    the same way (no agreement, not in the pool), so the three strategies compare under one rule."""
    assert len(answers) == len(finish), f"{len(answers)} answers, {len(finish)} finish reasons"
    return [None if f == "length" else a for a, f in zip(answers, finish)]


def summarize(results: Sequence[QuestionResult], seconds: float) -> dict:
    n_q = max(len(results), 1)
    chosen = [(r, i) for r in results for i in (range(len(r.completions)) if r.final < 0 else [r.final])]
    n_c = max(len(chosen), 1)
    texts = [r.completions[i] for r, i in chosen]
    gen = sum(r.generated_tokens for r in results)
    out = {
        "questions": len(results),
        "answers_per_question": sum(len(r.completions) for r in results) / n_q,
        "accuracy_strict": sum(r.strict[i] == r.gold for r, i in chosen) / n_c,
        "accuracy_lenient": sum(r.lenient[i] == r.gold for r, i in chosen) / n_c,
        "format_strict_rate": sum(strict_format_reward_func(texts)) / 0.5 / n_c,
        "format_soft_rate": sum(soft_format_reward_func(texts)) / 0.5 / n_c,
        "truncated_rate": sum(r.finish[i] == "length" for r, i in chosen) / n_c,
        "generated_tokens_per_question": gen / n_q,
        "generated_tokens_per_answer": sum(r.tokens[i] for r, i in chosen) / n_c,
        "forward_tokens_per_question": sum(r.forward_tokens for r in results) / n_q,  # tokens through the model
        "seconds": seconds,
        "seconds_per_question": seconds / n_q,
        "seconds_per_generated_token": seconds / max(gen, 1),
    }
    if any(len(r.completions) > 1 for r in results):
        for key in ("strict", "lenient"):
            out[f"pass_at_n_{key}"] = sum(any(p == r.gold for p in getattr(r, key)) for r in results) / n_q
            out[f"majority_at_n_{key}"] = sum(majority(finished_answers(getattr(r, key), r.finish)) == r.gold for r in results) / n_q
    return out


def check_search_fits(cfg: EvalConfig, questions: int) -> None:
    """Tree search's trees for one batch of questions, checked before an eval clears the answers of the one before it
    in its out-dir: the search makes the same check (tree_sizes) when it starts, by then with those gone."""
    if cfg.search == "mcts":
        tree_sizes(cfg.search_config(), min(cfg.batch_size, questions), cfg.max_new_tokens)


def choose(strategy: str, texts: list[str], lenient: list[str | None], format_weight: float, finish: list[str]) -> int:
    """Index of the strategy's answer among n sampled ones (finish: each one's finish reason)."""
    if strategy == "sample":
        return -1
    if strategy == "majority":
        votes = finished_answers(lenient, finish)  # (cut answers do not vote)
        m = majority(votes)
        if m is None:  # every answer cut or without a number: the first, as greedy would give
            return 0
        # the vote gives a number; of the answers that gave it, one in the format if any (as tree search's vote takes
        # its best-valued one), so that strict accuracy does not depend on which of them happened to be sampled first
        same = [i for i, a in enumerate(votes) if a == m]
        return next((i for i in same if parse_strict(texts[i]) == m), same[0])
    if strategy == "best-of-n":
        # tree search's value exactly: an answer cut by the token limit has no answer (no agreement, not in the pool)
        finished = [f != "length" for f in finish]
        answers = [parse_answer(t) if f else None for t, f in zip(texts, finished)]
        pool = [a for a in answers if a is not None]
        values = self_consistency_value(format_weight)(Candidates(texts, answers, finished, [pool] * len(texts),
                                                                  [0] * len(texts), [[] for _ in texts]))
        # and as tree search's final answer (pick_finished), the choice is among finished texts with an answer when
        # there is one: a formatted text without a number outscored five answered ones on format alone
        return max(range(len(texts)), key=lambda i: (answers[i] is not None, values[i], -i))
    return 0


@torch.no_grad()
def evaluate(
    model: Transformer,
    tokenizer,
    problems: Sequence[Problem],
    cfg: EvalConfig,
    shots: Sequence[Problem] = (),
    out_path: Path | None = None,
    tree_path: Path | None = None,
    progress: bool = True,
    done: Sequence[QuestionResult] = (),
    first_sample: int = 0,
) -> tuple[dict, list[QuestionResult]]:
    """Answer `problems`; returns the summary and per-question results (streamed to `out_path` as JSONL;
    for mcts, each tree to `tree_path`). The questions and the prompts' worked examples are the caller's: every one
    of `problems` is answered, with `shots` (cfg.limit and cfg.shots are what run.py eval chooses them by:
    data.gsm8k.questions_and_shots). `done`: the questions an interrupted eval answered (`run.py eval --resume`):
    the files are appended to, and the progress bar and the summary (their seconds included) count them.
    `first_sample`: sampled answers are numbered from it (each has its own random stream, named by its question
    and number), so a second call with first_sample=n draws answers n, n+1, ... of the same questions, more of the
    same pool (bench/compare.py's samples at equal tokens)."""
    n = answers_per_question(cfg)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0 if cfg.search == "greedy" else cfg.temperature,
                          top_k=cfg.top_k, top_p=cfg.top_p, eos_ids=stop_token_ids(tokenizer, model.cfg.eos_token_ids))
    stop = StopOnText(tokenizer, [cfg.stop]) if cfg.stop else None
    mode = "a" if done else "w"
    sink = out_path.open(mode) if out_path else None
    trees = tree_path.open(mode) if tree_path else None
    bar = tqdm(total=len(done) + len(problems), initial=len(done), desc=f"eval {cfg.search}", unit="q", disable=not progress)
    results: list[QuestionResult] = list(done)
    t0 = time.perf_counter()
    try:
        for s in range(0, len(problems), cfg.batch_size):
            batch = problems[s : s + cfg.batch_size]
            t_batch = time.perf_counter()
            prompts = encode_prompts(tokenizer, [p.question for p in batch], shots)
            if cfg.search == "mcts" and cfg.mcts_when != "tree":
                found = lookahead_decode(model, tokenizer, prompts, cfg.search_config(), When.parse(cfg.mcts_when),
                                         cfg.fallback_p, [p.index for p in batch], cfg.seed)
                new = [one_answer(p, f.text, len(f.tokens), f.finish, f.generated_tokens, f.forward_tokens) for p, f in zip(batch, found)]
            elif cfg.search == "mcts":
                # a batch of trees takes minutes on a CPU: the bar shows which simulation it is on
                found = search(model, tokenizer, prompts, cfg.search_config(), [p.index for p in batch], cfg.seed,
                               keep_trees=trees is not None, on_simulation=lambda s, n_sim: bar.set_postfix_str(f"simulation {s}/{n_sim}"))
                new = [one_answer(p, f.text, f.answer_tokens, f.finish, f.generated_tokens, f.forward_tokens) for p, f in zip(batch, found)]
                if trees:  # each batch's trees reach the disk before its predictions (a resumed eval needs both)
                    with naming(tree_path):  # (a full disk: the stop line names the file)
                        for p, f in zip(batch, found):
                            trees.write(json.dumps({"index": p.index, "question": p.question, "gold": p.answer, "answer": f.answer, **f.tree}) + "\n")
                        trees.flush()
            else:
                # one random stream per answer, named by its question: a question's answers do not depend on the
                # batch it is in, so a resumed eval (`run.py eval --resume`) gives the answers of an uninterrupted one
                gen = None if cfg.search == "greedy" else row_rng(
                    [f"eval/{cfg.seed}/{p.index}/{g}" for p in batch for g in range(first_sample, first_sample + n)], model.device)
                res = generate(model, prompts, scfg, gen, n=n, stop=stop, pad_id=tokenizer.pad_token_id)
                new = []
                for b, p in enumerate(batch):
                    rows = range(b * n, (b + 1) * n)
                    texts = [tokenizer.decode(res.row(r), skip_special_tokens=True) for r in rows]
                    lenient = [parse_lenient(t) for t in texts]
                    toks, fin = [int(res.lengths[r]) for r in rows], [res.finish[r] for r in rows]
                    new.append(QuestionResult(p.index, p.question, p.answer, texts, [parse_strict(t) for t in texts], lenient,
                                              toks, fin, choose(cfg.search, texts, lenient, cfg.format_weight, fin),
                                              sum(toks), len(prompts[b]) + sum(toks)))
            share = (time.perf_counter() - t_batch) / len(batch)
            for q in new:
                q.seconds = share
            results += new
            if sink:
                with naming(out_path):
                    sink.writelines(json.dumps(asdict(q)) + "\n" for q in new)
                    sink.flush()
            bar.update(len(batch))
            bar.set_postfix(acc=f"{summarize(results, 1.0)['accuracy_strict']:.3f}")
    finally:
        bar.close()
        for f, path in ((sink, out_path), (trees, tree_path)):
            if f:
                with naming(path):  # (closing flushes what a full disk refused again)
                    f.close()
    return summarize(results, sum(q.seconds for q in done) + time.perf_counter() - t0), results
