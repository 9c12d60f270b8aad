"""A tokenizer this project cannot use is refused as the model loads, in one line naming the model and the fix
(model_io/tokenizer_checks.py); one without an end or padding token still gets a padding id."""
import json

import pytest
from helpers import TINY_VOCAB, one_line

from model_io import ModelSpecError, export_hf, load
from model_io.tokenizer_checks import PROBE_CHAT


def exported(tmp_path, tiny, name="hf"):
    d = tmp_path / name
    export_hf(*tiny, d)
    return d


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("template, why", [
    ("{% for m in messages %}{{ m.content ", "TemplateSyntaxError: unexpected end of template"),
    ('{{ raise_exception("System role not supported") }}', "TemplateError: System role not supported"),
])
def test_a_chat_template_that_fails_to_render_is_one_line(tmp_path, tiny, template, why):
    """A syntax error or a template's own raise_exception (a model without a system turn) was a jinja traceback
    at the first prompt, after eval had cleared its output directory."""
    d = exported(tmp_path, tiny)
    (d / "chat_template.jinja").write_text(template)
    with pytest.raises(ModelSpecError, match=f"^the chat template of {d} fails on a chat of system, user and assistant "
                                             f"turns \\({why}.*\\): fix it in the model's tokenizer_config.json") as e:
        load(d)
    one_line(e)


def test_a_chat_template_that_is_not_text_is_one_line(tmp_path, tiny):
    d = exported(tmp_path, tiny)
    (d / "chat_template.jinja").unlink()
    edit_json(d / "tokenizer_config.json", chat_template=123)
    with pytest.raises(ModelSpecError, match=f"^the chat template of {d} fails on a chat .*\\(TypeError: "):
        load(d)


def test_a_chat_template_that_leaves_the_messages_out_is_refused(tmp_path, tiny):
    """'hello' rendered every prompt as the same five letters: every question the same, silently."""
    d = exported(tmp_path, tiny)
    (d / "chat_template.jinja").write_text("hello")
    with pytest.raises(ModelSpecError, match=f"^the chat template of {d} leaves the messages out of the text it renders"):
        load(d)


def test_a_special_token_the_vocabulary_lacks_is_named(tmp_path, tiny):
    """transformers appends an eos_token the vocabulary lacks as a new id past the embedding; the line used to
    blame another model's tokenizer."""
    d = exported(tmp_path, tiny)
    edit_json(d / "tokenizer_config.json", eos_token="<|nonexistent|>")
    with pytest.raises(ModelSpecError, match=f"^the tokenizer of {d} adds '<\\|nonexistent\\|>' \\(id {TINY_VOCAB}\\) past "
                                             f"the model's {TINY_VOCAB} embedding rows: a special token in its "
                                             "tokenizer_config.json that the vocabulary lacks") as e:
        load(d)
    one_line(e)


def test_no_end_and_no_padding_token_still_pads_with_the_configs_end_id(tmp_path, tiny, capsys):
    """Both null in tokenizer_config.json: padding was None, a TypeError in the first prefill."""
    d = exported(tmp_path, tiny)
    edit_json(d / "tokenizer_config.json", eos_token=None, pad_token=None)
    edit_json(d / "config.json", pad_token_id=None)  # (AutoTokenizer would take config.json's pad id)
    _, tok = load(d)
    assert tok.eos_token_id is None and tok.pad_token_id == 258  # the model config's EOS
    assert "warning" not in capsys.readouterr().err  # the config's EOS still ends answers
    edit_json(d / "config.json", eos_token_id=None)
    _, tok = load(d)
    assert tok.pad_token_id == 0
    (line,) = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning")]  # (beside the loading bar)
    assert line == (f"warning: neither the tokenizer nor the config of {d} names an end-of-sequence token: answers end "
                    "only at the stop text or the token limit")


def test_a_config_end_id_outside_the_vocabulary_is_named(tmp_path, tiny):
    """eos_token_id 999999 was taken with only transformers' warning: no row ever ended at the model's own EOS."""
    d = exported(tmp_path, tiny)
    edit_json(d / "config.json", eos_token_id=999999)
    with pytest.raises(ModelSpecError, match=f"^{d}: the config's eos_token_id 999999 lies outside the model's "
                                             f"{TINY_VOCAB} tokens: set it to the id of the model's end-of-turn token$"):
        load(d)
    edit_json(d / "config.json", eos_token_id=[258, -1])
    with pytest.raises(ModelSpecError, match=r"eos_token_id \[258, -1\] lies outside"):
        load(d)


def test_padding_skips_an_end_id_the_tokenizer_cannot_name_and_the_warning_needs_no_missing_pad(tmp_path, capsys):
    """The config's EOS among the embedding's padded rows (past the tokenizer's tokens) has no token to pad with:
    padding stayed None (a review); and a tokenizer with a padding token but no EOS anywhere was not warned of."""
    from helpers import tiny_hf_model, tiny_tokenizer

    from model_io.convert import from_hf_model

    d = tmp_path / "hf"
    export_hf(from_hf_model(tiny_hf_model("qwen2", vocab=300, eos_token_id=290)), tiny_tokenizer(), d)
    edit_json(d / "tokenizer_config.json", eos_token=None, pad_token=None)
    edit_json(d / "config.json", pad_token_id=None)
    _, tok = load(d)
    assert tok.pad_token_id == 0
    assert "warning" not in capsys.readouterr().err  # the config's EOS (290) still ends answers
    edit_json(d / "tokenizer_config.json", pad_token="<|endoftext|>")
    edit_json(d / "config.json", eos_token_id=None)
    _, tok = load(d)
    assert tok.pad_token_id == 256
    assert [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning")] == [
        f"warning: neither the tokenizer nor the config of {d} names an end-of-sequence token: answers end only at the "
        "stop text or the token limit"]


def test_the_probe_chat_has_the_roles_of_a_real_prompt_in_order():
    """The probe stands for data/prompts.build_messages' chats (system, a worked example, the question): if the
    prompts change their roles, the probe must follow."""
    from data import Problem
    from data.prompts import build_messages

    real = build_messages("q?", [Problem("a?", "1", "s", 0)])
    assert [m["role"] for m in PROBE_CHAT] == [m["role"] for m in real]
