"""Prompts in the reasoning/answer format of the GRPO GSM8K recipe, rendered through the chat template.

The model is asked to answer as
    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>
which the format rewards (grpo/rewards.py) check and the strict parser (data/answers.py) reads.
"""
from __future__ import annotations

import re
from typing import Sequence

from .gsm8k import Problem

SYSTEM_PROMPT = """Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>"""

ANSWER_STOP = "</answer>"
CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>


def format_solution(p: Problem) -> str:
    """A train problem's worked solution in the target format (for k-shot examples)."""
    return f"<reasoning>\n{CALC.sub('', p.solution)}\n</reasoning>\n<answer>\n{p.answer}\n</answer>"


def build_messages(question: str, shots: Sequence[Problem] = (), system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}]
    for s in shots:
        msgs += [{"role": "user", "content": s.question}, {"role": "assistant", "content": format_solution(s)}]
    return msgs + [{"role": "user", "content": question}]


def render_prompt(tokenizer, question: str, shots: Sequence[Problem] = (), system: str = SYSTEM_PROMPT) -> str:
    """The prompt text, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(build_messages(question, shots, system), tokenize=False, add_generation_prompt=True)


def encode_prompts(tokenizer, questions: Sequence[str], shots: Sequence[Problem] = ()) -> list[list[int]]:
    # the chat template already holds the special tokens (BOS included where the model uses one)
    return [tokenizer(render_prompt(tokenizer, q, shots), add_special_tokens=False)["input_ids"] for q in questions]


class StopOnText:
    """Sampler stop criterion: a row is finished once its decoded text contains one of `strings`.

    The sampler passes only the newest `window` tokens of each row (a stop string is found on the step that completes it),
    so the cost per step does not grow with the completion. The window is counted in UTF-8 bytes, not characters:
    a byte-level tokenizer may spend a token per byte of a non-ASCII character, and every token holds at least one
    byte, so a stop string spans at most its byte count of tokens (counted in characters, "答案" (6 bytes) got a
    window of 4 tokens and was never found); +2 for the tokens it shares with the text around it."""

    def __init__(self, tokenizer, strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.strings = tuple(strings)
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + 2 if self.strings else 0

    def __call__(self, tails: list[list[int]]) -> list[bool]:
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        return [any(s in t for s in self.strings) for t in texts]


def stop_token_ids(tokenizer, model_eos: Sequence[int] = ()) -> tuple[int, ...]:
    """Every id that ends a turn: the model config's EOS ids and the tokenizer's EOS."""
    ids = set(model_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))
