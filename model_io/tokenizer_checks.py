"""What a tokenizer must give this project, checked once as a model loads, before any work or output.

Every prompt here is a chat rendered by the tokenizer's chat template (data/prompts.py), every id it gives indexes
the model's embedding, and a batch of prompts is left-padded with some id. A tokenizer that fails one of these
used to fail later: a broken template as a jinja traceback once the first prompt rendered, an id past the
embedding as an IndexError (a device-side assert on a GPU), a tokenizer with neither end nor padding token as a
TypeError in the first prefill, after `eval` had cleared its output directory. `check_tokenizer` says each in
one line naming the model and the fix (a ModelSpecError), and settles the padding id.
"""
from __future__ import annotations

import sys

from .config import ModelConfig, ModelSpecError

# A conversation of every role our prompts use (system, a worked example's user and assistant turns, the
# question), so that a template refusing one of them (a model without a system role) is found here.
PROBE_QUESTION = "How many apples are 12 apples and 30 apples?"
PROBE_CHAT = [
    {"role": "system", "content": "Respond in the requested format."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": PROBE_QUESTION},
]


def first_line(e: BaseException) -> str:
    """An exception's message, first line only (the caller's one-line error; library messages run to pages)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "no message"


def check_tokenizer(spec: str, tok, cfg: ModelConfig) -> None:
    """Refuse a tokenizer this project cannot use (ModelSpecError, one line); set its padding token if it has none."""
    check_chat_template(spec, tok)
    if not tok.encode("12 apples", add_special_tokens=False):  # transformers builds an empty tokenizer (one token) from
        # files it does not read for the model's class (a *.tiktoken, vocab.txt or tokenizer.model beside a Qwen2 model)
        raise ModelSpecError(f"the tokenizer of {spec} encodes text to no tokens: transformers read none of its files "
                             f"for a {cfg.arch} model; copy in the tokenizer files (tokenizer.json, tokenizer_config.json) "
                             "of the model the weights came from")
    check_vocab(spec, tok, cfg.vocab_size)
    set_padding(spec, tok, cfg)


def check_chat_template(spec: str, tok) -> None:
    """The template exists, renders a chat of every role our prompts use, and puts the messages in its text."""
    if not getattr(tok, "chat_template", None):
        fix = "an instruct (chat) model's GGUF" if spec.endswith(".gguf") else \
            "an instruct (chat) model, or add a chat_template to its tokenizer_config.json"
        raise ModelSpecError(f"the tokenizer of {spec} has no chat template, which this project's prompts need: pass {fix}")
    try:
        text = tok.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja's TemplateSyntaxError, a template's raise_exception(...), a template that is no string
        raise ModelSpecError(f"the chat template of {spec} fails on a chat of system, user and assistant turns "
                             f"({type(e).__name__}: {first_line(e)}): fix it in the model's tokenizer_config.json or "
                             "chat_template.jinja, or pass a model whose template takes a system turn") from None
    if not isinstance(text, str) or PROBE_QUESTION not in text:
        raise ModelSpecError(f"the chat template of {spec} leaves the messages out of the text it renders: fix it in the "
                             "model's tokenizer_config.json or chat_template.jinja")


def check_vocab(spec: str, tok, vocab_size: int) -> None:
    """Every id the tokenizer can give must have a row in the model's embedding: a tokenizer copied from another
    model gives ids past it, an IndexError at the first forward pass on a CPU and a device-side assert (the
    process unusable) on a GPU. (Fewer tokens than rows is normal: vocabularies are padded to a round size.)
    Where only added tokens lie past it (a special token named in tokenizer_config.json that the vocabulary
    lacks, which transformers appends), the line names them."""
    vocab = tok.get_vocab()
    ids = max(vocab.values(), default=-1) + 1
    if ids <= vocab_size:
        return
    past = sorted((i, t) for t, i in vocab.items() if i >= vocab_size)
    added = tok.get_added_vocab()
    if all(t in added for _, t in past):
        names = ", ".join(f"{t!r} (id {i})" for i, t in past[:3]) + (f" and {len(past) - 3} more" if len(past) > 3 else "")
        raise ModelSpecError(f"the tokenizer of {spec} adds {names} past the model's {vocab_size} embedding rows: a special "
                             f"token in its tokenizer_config.json that the vocabulary lacks; name one the vocabulary has")
    raise ModelSpecError(f"the tokenizer of {spec} gives ids up to {ids - 1}, but the model's embedding has {vocab_size} "
                         f"rows: the tokenizer is another model's; copy in the tokenizer files of the model the weights "
                         f"came from")


def set_padding(spec: str, tok, cfg: ModelConfig) -> None:
    """Left padding is masked out, so any id serves: the tokenizer's own, else its EOS (as HF does), else the
    model config's first EOS id that the tokenizer can name (an id among the embedding's padded rows has no
    token), else 0. A model with no EOS anywhere ends its answers only at the stop text or the token limit: said
    once, as a warning."""
    if tok.eos_token_id is None and not cfg.eos_token_ids:
        print(f"warning: neither the tokenizer nor the config of {spec} names an end-of-sequence token: answers end "
              "only at the stop text or the token limit", file=sys.stderr)
    if tok.pad_token_id is not None:
        return
    ids = [i for i in (tok.eos_token_id, *cfg.eos_token_ids) if i is not None and i < len(tok)] + [0]
    tok.pad_token = tok.convert_ids_to_tokens(ids[0])
