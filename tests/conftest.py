import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def gsm8k_dir() -> str:
    d = os.environ.get("GSM8K_DIR")
    if not d or not Path(d, "test.jsonl").is_file():
        pytest.fail("set GSM8K_DIR to the directory holding GSM8K's train.jsonl and test.jsonl (CI: ../shared/data/gsm8k)")
    return str(Path(d).resolve())  # absolute: CI gives a relative path, and some tests change directory


@pytest.fixture(scope="session")
def embedded():
    """The embedded default (ours) and the transformers model it was converted from, loaded once per session."""
    from transformers import AutoModelForCausalLM

    from model_io import load
    from model_io.loading import embedded_gguf

    path = embedded_gguf()
    model, tok = load()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, tok, hf


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random Qwen2-shaped checkpoint in our format (tests/helpers.py), made once per test module."""
    from helpers import tiny_hf_model, tiny_tokenizer

    from model_io import save_model
    from model_io.convert import from_hf_model

    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(from_hf_model(tiny_hf_model("qwen2")), tiny_tokenizer(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Qwen2-shaped model of ours and its tokenizer, made once per test module."""
    from helpers import tiny_hf_model, tiny_tokenizer

    from model_io.convert import from_hf_model

    return from_hf_model(tiny_hf_model("qwen2")), tiny_tokenizer()
