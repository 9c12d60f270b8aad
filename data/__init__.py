"""data: GSM8K problems, answer parsing and prompts. Deals in text; knows nothing of models."""
from .answers import extract_gold, normalize_number, parse_lenient, parse_strict
from .gsm8k import DataError, Problem, load_gsm8k
from .prompts import SYSTEM_PROMPT, StopOnText, build_messages, encode_prompts, render_prompt, stop_token_ids

__all__ = [
    "DataError", "Problem", "load_gsm8k", "extract_gold", "normalize_number", "parse_strict", "parse_lenient",
    "SYSTEM_PROMPT", "StopOnText", "build_messages", "encode_prompts", "render_prompt", "stop_token_ids",
]
