"""GSM8K loading (file, directory, env, hub fallback) and answer parsing."""
import builtins
import json
from pathlib import Path

import pytest
from conftest import gsm8k_dir

from data import DataError, Problem, extract_gold, load_gsm8k, normalize_number, parse_lenient, parse_strict
from data.prompts import StopOnText, build_messages, encode_prompts, format_solution, render_prompt


def test_loads_both_splits_from_env(monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    train, test = load_gsm8k("train"), load_gsm8k("test")
    assert (len(train), len(test)) == (7473, 1319)
    p = train[0]
    assert p.answer == "72" and p.question.startswith("Natalia") and "####" not in p.solution and p.index == 0
    assert all(normalize_number(q.answer) == q.answer for q in test)


def test_explicit_file_and_directory(tmp_path):
    rows = [{"question": "What is 1,000 + 234?", "answer": "1000+234=1234\n#### 1,234"},
            {"question": "Owe?", "answer": "#### -5"}]
    f = tmp_path / "test.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert [p.answer for p in load_gsm8k("test", f)] == ["1234", "-5"]
    assert [p.answer for p in load_gsm8k("test", tmp_path)] == ["1234", "-5"]


def test_a_file_is_one_split_and_commands_that_need_two_refuse_it(tmp_path, monkeypatch):
    """A test.jsonl given where train problems are needed (the prompt's worked examples) once served as both, so
    test questions were asked with their own answers in the prompt."""
    from data.gsm8k import check_one_file, questions_and_shots

    monkeypatch.delenv("GSM8K_DIR", raising=False)
    row = lambda i: json.dumps({"question": f"q{i}", "answer": f"#### {i}"})
    (tmp_path / "test.jsonl").write_text("\n".join(row(i) for i in range(3)) + "\n")
    (tmp_path / "train.jsonl").write_text("\n".join(row(i) for i in range(10, 12)) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl is the test split, but the train split is needed"):
        load_gsm8k("train", tmp_path / "test.jsonl")
    with pytest.raises(DataError, match=r"--gsm8k .*test\.jsonl is one file, but the test and train splits are needed"):
        questions_and_shots("test", str(tmp_path / "test.jsonl"), shots=2)
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path / "test.jsonl"))
    with pytest.raises(DataError, match=r"GSM8K_DIR .* is one file"):
        check_one_file({"train", "test"}, "training")
    problems, shots = questions_and_shots("test", str(tmp_path / "test.jsonl"), shots=0, limit=2)  # zero-shot: one split
    assert [p.answer for p in problems] == ["0", "1"] and shots == []
    problems, shots = questions_and_shots("test", str(tmp_path), shots=2)
    assert [p.answer for p in shots] == ["10", "11"] and len(problems) == 3
    # on the train split the worked examples are not asked: here nothing would be left, and that is said
    with pytest.raises(DataError, match="no questions to answer: the train split holds 2, all of them the prompt's 2"):
        questions_and_shots("train", str(tmp_path), shots=2)
    with pytest.raises(DataError, match="--shots 3: the train split holds only 2"):
        questions_and_shots("test", str(tmp_path), shots=3)


@pytest.mark.parametrize("line,why", [("{not json", "malformed"), ('{"question": "q"}', "answer"),
                                      ('{"question": "q", "answer": "no mark"}', "####")])
def test_malformed_line_names_file_and_line(tmp_path, line, why):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"question": "ok", "answer": "#### 1"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"train\.jsonl:2: .*{why}"):
        load_gsm8k("train", f)


def test_a_file_saved_with_a_bom_or_crlf_reads_as_the_original(tmp_path):
    rows = [{"question": "What is 1,000 + 234?", "answer": "1000+234=1234\n#### 1,234"}, {"question": "Owe?", "answer": "#### -5"}]
    lines = [json.dumps(r) for r in rows]
    (tmp_path / "test.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert load_gsm8k("test", tmp_path) == load_gsm8k("train", tmp_path)


def test_blank_lines_do_not_shift_indices_and_questions_are_stripped(tmp_path):
    """A problem's index is its position among the split's problems (the sampler's random streams and a resumed eval's
    question check are keyed by it), not its line number: a blank line between rows does not shift it."""
    rows = [json.dumps({"question": "  q0?\n", "answer": "#### 1"}), "", "   ", json.dumps({"question": "q1?", "answer": "#### 2"})]
    (tmp_path / "test.jsonl").write_text("\n".join(rows) + "\n")
    assert [(p.index, p.question) for p in load_gsm8k("test", tmp_path)] == [(0, "q0?"), (1, "q1?")]


@pytest.mark.parametrize("content,why", [
    (b'{"question": 5, "answer": "#### 5"}\n', r"train\.jsonl:2: malformed GSM8K line \(field 'question' is int, not a string\)"),
    (b'{"question": null, "answer": "#### 5"}\n', r"train\.jsonl:2: .*field 'question' is NoneType"),
    (b'[1, 2]\n', r"train\.jsonl:2: .*a JSON object was expected, not list"),
    (b'{"question": "caf\xe9", "answer": "#### 5"}\n', r"train\.jsonl:2: not UTF-8 text .*save the file as UTF-8"),
    pytest.param(b'[' * 100_000 + b'\n', r"train\.jsonl:2: malformed GSM8K line \(maximum recursion depth exceeded",
                 id="nested-past-the-recursion-limit"),  # a RecursionError traceback (a fuzz)
])
def test_wrong_types_and_encodings_name_file_and_line(tmp_path, content, why):
    f = tmp_path / "train.jsonl"
    f.write_bytes(json.dumps({"question": "ok", "answer": "#### 1"}).encode() + b"\n" + content)
    with pytest.raises(DataError, match=why):
        load_gsm8k("train", f)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"question": "ok", "answer": "#### 1"}) + "\n")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=r"train\.jsonl cannot be read \(Permission denied\): check its permissions"):
        load_gsm8k("train", f)


def test_no_source_names_all_three_ways(monkeypatch, tmp_path):
    monkeypatch.delenv("GSM8K_DIR", raising=False)
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError) as e:
        load_gsm8k("test")
    msg = str(e.value)
    assert "--gsm8k" in msg and "GSM8K_DIR" in msg and "openai/gsm8k" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"^--gsm8k .*nope: no such file or directory: pass --gsm8k DIR"):
        load_gsm8k("test", tmp_path / "nope")
    with pytest.raises(DataError, match=r"^--gsm8k .* holds no test.jsonl, the GSM8K test split"):
        load_gsm8k("test", tmp_path)


def test_a_bad_gsm8k_dir_is_named_as_the_environment_variable(monkeypatch, tmp_path):
    """GSM8K_DIR set to a missing path: the error names the variable (not "file ... not found: set GSM8K_DIR")."""
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path / "gsm8k"))
    with pytest.raises(DataError, match=r"^GSM8K_DIR .*gsm8k: no such file or directory: set GSM8K_DIR to the directory "
                                        r"holding train.jsonl and test.jsonl, or unset it"):
        load_gsm8k("train")
    with pytest.raises(DataError, match="unknown GSM8K split"):
        load_gsm8k("validation", tmp_path)


def test_without_network_or_cache_the_hub_path_fails_at_once_in_one_line(monkeypatch, tmp_path):
    """The real `datasets`, an empty cache, the hub unreachable: the cache is read offline (no request, so none of
    huggingface_hub's ~25 s of retries), then one probe says why, in one line."""
    datasets = pytest.importorskip("datasets")
    import socket
    import time

    from model_io import loading

    monkeypatch.delenv("GSM8K_DIR", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda repo, f, repo_type: f"{repo_type} {repo}/{f}: no DNS (test)")

    def no_sockets(*a, **k):
        raise AssertionError("a network request while reading the cache")

    def no_waits(seconds):  # huggingface_hub's retries back off with time.sleep: none may happen (not a timed check)
        raise AssertionError(f"a {seconds} s wait: a retry's back-off while loading")

    monkeypatch.setattr(socket, "create_connection", no_sockets)
    monkeypatch.setattr(socket.socket, "connect", no_sockets)
    monkeypatch.setattr(time, "sleep", no_waits)
    with pytest.raises(DataError) as e:
        load_gsm8k("test")
    msg = str(e.value)
    assert "not in the datasets cache" in msg and "dataset openai/gsm8k/README.md: no DNS (test)" in msg
    assert "GSM8K_DIR" in msg and "\n" not in msg
    import huggingface_hub.constants

    assert datasets.config.HF_HUB_OFFLINE is huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_the_hub_path_reads_a_cached_copy_offline_first(monkeypatch, tmp_path, capfd):
    """A copy of openai/gsm8k in the real `datasets` cache (laid out as the hub load leaves it) loads with no request
    at all: the hub probe and every socket would fail the test; datasets' "using the cached version" warning is
    not printed."""
    datasets = pytest.importorskip("datasets")
    import glob
    import shutil
    import socket

    from model_io import loading

    src = tmp_path / "test.jsonl"
    src.write_text(json.dumps({"question": "Q?", "answer": "so 6\n#### 6"}) + "\n")
    datasets.load_dataset("json", data_files={"test": str(src)}, cache_dir=str(tmp_path / "build"))
    found = glob.glob(str(tmp_path / "build" / "json" / "*" / "0.0.0" / "*" / "json-test.arrow"))
    if not found:  # the layout of datasets 5.2.0 (seen 2026-12-03); another version needs this copy redone
        pytest.skip(f"datasets {datasets.__version__} lays out its cache otherwise")
    built = Path(found[0]).parent
    cached = tmp_path / "cache" / "openai___gsm8k" / "main" / "0.0.0" / "0123abcd"  # namespace___name/config/version/hash
    shutil.copytree(built, cached)
    (cached / "json-test.arrow").rename(cached / "gsm8k-test.arrow")
    info = json.loads((cached / "dataset_info.json").read_text())
    (cached / "dataset_info.json").write_text(json.dumps({**info, "builder_name": "gsm8k", "config_name": "main", "dataset_name": "gsm8k"}))
    capfd.readouterr()

    tried = []

    def no_sockets(*a, **k):  # recorded: a library may swallow the error and fall back to its cache
        tried.append(a)
        raise OSError("no network (test)")

    monkeypatch.delenv("GSM8K_DIR", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda *a, **k: pytest.fail("went online for a cached dataset"))
    monkeypatch.setattr(socket, "create_connection", no_sockets)
    monkeypatch.setattr(socket.socket, "connect", no_sockets)
    assert load_gsm8k("test") == [Problem(question="Q?", answer="6", solution="so 6", index=0)]
    assert not tried, f"network requests for a cached dataset: {tried}"
    assert not datasets.config.HF_HUB_OFFLINE  # offline only while reading the cache
    assert "cached" not in capfd.readouterr().err


@pytest.mark.parametrize("text,expected", [
    ("18", "18"), ("18.00", "18"), ("$18", "18"), ("1,234", "1234"), ("-7", "-7"), ("18.", "18"),
    (" $1,234.50 ", "1234.5"), ("0.0", "0"), ("+3", "3"), (".5", "0.5"), ("abc", None), ("18 dollars", None),
    ("", None), (None, None), ("1e5", None), ("--3", None), ("1 000", "1000"), ("$ 12 500.5", "12500.5"),
    ("3 4", None), ("1 00", None), ("12 000 5", None), ("-0.0", "0"), ("-.50", "-0.5"), ("1,000.000", "1000"),
    ("\uff17\uff12", "72"),  # full-width digits: any Unicode decimal digit counts (the module docstring says so)
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_normalize_number_is_exact_at_any_length():
    """Decimal's normalize() rounded to 28 significant digits (30 nines after the point became "1", a correct
    answer to a gold of 1), and str(int()) raised ValueError past Python's 4300-digit limit (a runaway answer)."""
    nines = "0." + "9" * 30
    assert normalize_number(nines) == nines and normalize_number(nines) != normalize_number("1")
    assert normalize_number("12345678901234567890123456789.5") == "12345678901234567890123456789.5"
    assert normalize_number("9" * 5000) == "9" * 5000 and normalize_number("9" * 5000 + ".50") == "9" * 5000 + ".5"
    assert parse_lenient("so " + "9" * 5000) == "9" * 5000


def test_answer_content_is_the_last_pair_the_regex_finds():
    import itertools
    import re

    from data.answers import answer_content

    def by_regex(text):
        found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        return found[-1].strip() if found else None

    # every string of up to 5 pieces: nested, unclosed, stray closing tags and text between them
    pieces = ["<answer>", "</answer>", " 7 ", "<answer></answer>", "\n"]
    for n in range(6):
        for combo in itertools.product(pieces, repeat=n):
            text = "".join(combo)
            assert answer_content(text) == by_regex(text), text
    text = "<answer>1</answer>" + "<answer>x" * 3000  # a completion looping the tag: one pass, not 3000
    assert answer_content(text) == "1" == by_regex(text)


def test_gold_strict_and_lenient_parsing():
    assert extract_gold("so 5*3=15\n#### 1,500") == "1500"
    assert parse_strict("<reasoning>\n2+2\n</reasoning>\n<answer>\n$4.00\n</answer>") == "4"
    assert parse_strict("<answer>3</answer> then <answer> 12 </answer>") == "12"  # the last closed tag
    assert parse_strict("<answer>\n12") is None  # never closed
    assert parse_strict("<answer>twelve</answer>") is None
    # commas only as thousands separators: a decimal comma or a stray one is not a number
    assert parse_strict("<answer>1,5</answer>") is None and parse_strict("<answer>1,23</answer>") is None
    assert parse_strict("<answer>-1,000.</answer>") == "-1000"
    assert parse_lenient("I had 3 apples, then 1,200 more, total $1,203.") == "1203"
    assert parse_lenient("it costs -4.50 now") == "-4.5"
    assert parse_lenient("no digits") is None
    # a minus is a sign only when it cannot be subtraction or a list dash
    assert parse_lenient("x = 20 - 5") == "5" and parse_lenient("x = 20-5") == "5"
    assert parse_lenient("Total:\n- 12 apples") == "12" and parse_lenient("it fell to -3") == "-3"
    assert parse_lenient("costs $ 12 or -$4") == "-4" and parse_lenient("(-7)") == "-7"
    assert parse_lenient("1,2345") == "2345" and parse_lenient("paid 1,234,567.5") == "1234567.5"
    assert parse_lenient("The answer is 1,200, which is final") == "1200"  # a sentence comma after the number
    # thousands grouped by spaces read the same both ways; other spaced digits are separate numbers
    assert parse_lenient("so it is 1 000") == "1000" == parse_strict("<answer>1 000</answer>")
    assert parse_lenient("rows 3 4") == "4" and parse_strict("<answer>3 4</answer>") is None
    assert parse_lenient("12 0000") == "0"  # not a thousands group: the last number is 0000


def test_lenient_signs_bare_decimals_trailing_periods_and_the_last_gold_mark():
    # (worked by hand) a minus after a closing bracket is subtraction: "f(x)-3" and "a[2]-1" end with 3 and 1
    assert parse_lenient("f(x)-3") == "3" and parse_lenient("a[2]-1") == "1"
    # a bare decimal keeps its sign: "-.5" is -0.5 and "-$.75" is -0.75, not 0.5 and 0.75
    assert parse_lenient("it dropped by -.5") == "-0.5" and parse_lenient("down -$.75") == "-0.75"
    # a sentence's period after a decimal answer: "2.5." is 2.5 (as "18." is 18), with commas too
    assert normalize_number("2.5.") == "2.5" and parse_strict("<answer>2.5.</answer>") == "2.5"
    assert normalize_number("1,000.5.") == "1000.5"
    # the gold is the number after the last '####' (the worked solution is the text before it)
    assert extract_gold("first guess #### 3\nchecked: #### 5") == "5"


def test_prompts_render_through_the_chat_template():
    from helpers import tiny_tokenizer

    from data import Problem

    tok = tiny_tokenizer()
    shot = Problem("What is 2+2?", "4", "2+2=<<2+2=4>>4", 0)
    assert format_solution(shot) == "<reasoning>\n2+2=4\n</reasoning>\n<answer>\n4\n</answer>"
    msgs = build_messages("Q?", [shot])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    text = render_prompt(tok, "Q?")
    assert text.startswith("<|im_start|>system\nRespond in the following format:") and text.endswith("<|im_start|>assistant\n")
    ids = encode_prompts(tok, ["Q?"])[0]
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == text


def test_every_shot_reaches_the_prompt_and_each_calculator_note_goes_alone():
    from helpers import tiny_tokenizer

    from data import Problem

    tok = tiny_tokenizer()
    # two notes on one line: each <<...>> is removed alone, the text between them kept
    shot = Problem("Two sums?", "6", "1+1=<<1+1=2>>2 and 2*3=<<2*3=6>>6", 0)
    assert format_solution(shot) == "<reasoning>\n1+1=2 and 2*3=6\n</reasoning>\n<answer>\n6\n</answer>"
    shots = [shot, Problem("Three?", "3", "1+2=3", 1)]
    ids = encode_prompts(tok, ["Q?"], shots)[0]
    text = render_prompt(tok, "Q?", shots)
    assert tok.decode(ids) == text and text.index("Two sums?") < text.index("Three?") < text.index("Q?")
    # each shot: its question as the user's turn, its worked solution as the assistant's
    assert build_messages("Q?", shots[:1])[1:] == [{"role": "user", "content": "Two sums?"},
                                                  {"role": "assistant", "content": format_solution(shot)},
                                                  {"role": "user", "content": "Q?"}]


def test_stop_token_ids_are_the_models_and_the_tokenizers():
    from helpers import tiny_tokenizer

    from data import stop_token_ids

    tok = tiny_tokenizer()  # its EOS is 258
    assert stop_token_ids(tok, [300, 5, 258]) == (5, 258, 300) and stop_token_ids(tok) == (258,)


def test_stop_on_text_finds_strings_split_across_tokens():
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    stop = StopOnText(tok, ["</answer>"])
    assert stop.window == len("</answer>") + 2
    ids = tok("x</answer>", add_special_tokens=False)["input_ids"]  # one token per byte here
    assert stop([ids[-stop.window:], ids[:-1]]) == [True, False]
    # found anywhere in the tail, not only at its end: a token may carry text past the stop string ("</answer>\n")
    tail = tok("</answer>\n", add_special_tokens=False)["input_ids"]
    assert stop([tail]) == [True]
    two = StopOnText(tok, ["</answer>", "STOP"])
    assert two([tok("xSTOP", add_special_tokens=False)["input_ids"], tok("x</answ", add_special_tokens=False)["input_ids"]]) == [True, False]
    # a non-ASCII stop string: the window counts its UTF-8 bytes, one token each here ("答案" is 6 bytes, 2
    # characters: a window of 2 + 2 = 4 tokens never held it whole, and the row ran on to its token limit)
    cn = StopOnText(tok, ["答案"])
    ids = tok("x答案", add_special_tokens=False)["input_ids"]
    assert len(tok("答案", add_special_tokens=False)["input_ids"]) == 6 and cn.window == 8
    assert cn([ids[-cn.window:]]) == [True]
