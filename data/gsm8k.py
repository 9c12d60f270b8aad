"""GSM8K (Cobbe et al. 2021): grade-school maths word problems with a numeric answer after '####'.

Sources, first that applies: an explicit file or directory; the directory in env GSM8K_DIR (original
train.jsonl / test.jsonl); the hub dataset openai/gsm8k (config main) through `datasets`, imported only then.
"""
from __future__ import annotations

import io
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .answers import extract_gold

SPLITS = ("train", "test")
HUB_ID = "openai/gsm8k"
HOW = (
    "pass --gsm8k PATH (a train.jsonl/test.jsonl file or their directory), set GSM8K_DIR to that directory, "
    f"or install `datasets` with network access to the hub dataset {HUB_ID}"
)


class DataError(ValueError):
    """Data that cannot be read; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # normalised gold number, e.g. "72"
    solution: str  # the worked solution, without its '#### answer' line
    index: int = 0  # position in its split


def _problem(q: str, a: str, index: int) -> Problem:
    return Problem(question=q.strip(), answer=extract_gold(a), solution=a.rsplit("####", 1)[0].strip(), index=index)


def _read_jsonl(path: Path) -> list[Problem]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"GSM8K file {path} cannot be read ({e.strerror or e}): check its permissions") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (as Windows editors save UTF-8) is not part of line 1
    except UnicodeDecodeError as e:
        n = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start}): save the file as UTF-8") from None
    out = []
    for n, line in enumerate(io.StringIO(text, newline=None), 1):  # lines as a text-mode open splits them
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError(f"a JSON object was expected, not {type(row).__name__}")
            bad = [k for k in ("question", "answer") if k in row and not isinstance(row[k], str)]
            if bad:
                raise TypeError(f"field {bad[0]!r} is {type(row[bad[0]]).__name__}, not a string")
            out.append(_problem(row["question"], row["answer"], len(out)))
        except (KeyError, TypeError, ValueError, RecursionError) as e:  # (RecursionError: nested past Python's limit)
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise DataError(f"{path}:{n}: malformed GSM8K line ({what}); expected JSON with 'question' and 'answer'") from None
    if not out:
        raise DataError(f"{path}: no problems in file")
    return out


def _from_path(path: Path, split: str, via: str = "--gsm8k") -> list[Problem]:
    """`via`: where the path came from ("--gsm8k" or "GSM8K_DIR"), named in the errors."""
    fix = ("pass --gsm8k DIR, the directory holding train.jsonl and test.jsonl" if via == "--gsm8k" else
           "set GSM8K_DIR to the directory holding train.jsonl and test.jsonl, or unset it to read the hub dataset")
    if not path.exists():
        raise DataError(f"{via} {path}: no such file or directory: {fix}")
    if path.is_dir():
        if not (path / f"{split}.jsonl").is_file():
            raise DataError(f"{via} {path} holds no {split}.jsonl, the GSM8K {split} split: {fix}")
        path = path / f"{split}.jsonl"
    elif path.stem in SPLITS and path.stem != split:  # a file is one split: test.jsonl never serves as train
        raise DataError(f"{path} is the {path.stem} split, but the {split} split is needed: pass {split}.jsonl, "
                        "or the directory holding train.jsonl and test.jsonl")
    return _read_jsonl(path)


def _from_hub(split: str) -> list[Problem]:
    """From the `datasets` cache when it holds the split (no network), else downloaded; without network and cache,
    one line at once instead of ~25 s of huggingface_hub's retries (5 of them, a log line each)."""
    try:
        import datasets  # only on this path: machines without `datasets` still load local files
    except ImportError:
        raise DataError(f"no GSM8K source: {HOW}") from None
    try:
        with _hub_offline():
            ds = datasets.load_dataset(HUB_ID, "main", split=split)
    except Exception:  # not cached (or an older cache layout): the hub then
        from model_io.loading import hub_unreachable  # one request, no retries (lazy: data/ needs no torch)

        why = hub_unreachable(HUB_ID, "README.md", repo_type="dataset")
        if why is not None:
            raise DataError(f"{HUB_ID} is not in the datasets cache and the Hugging Face hub cannot be reached ({why}): "
                            f"{HOW}") from None
        try:
            ds = datasets.load_dataset(HUB_ID, "main", split=split)
        except Exception as e:  # auth, disk, a network that failed mid-way: all mean the same thing to the user
            raise DataError(f"cannot load {HUB_ID} from the hub ({type(e).__name__}); {HOW}") from None
    return [_problem(r["question"], r["answer"], i) for i, r in enumerate(ds)]


@contextmanager
def _hub_offline():
    """datasets and huggingface_hub in offline mode for a while: cached files only, any request refused at once.
    Both read HF_HUB_OFFLINE from the environment once, at import, so their module constants are set instead."""
    import datasets.config
    import huggingface_hub.constants as hub

    was = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    log = logging.getLogger("datasets")  # its "using the latest cached version ... offline mode" warning
    level = log.level
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = was
        log.setLevel(level)


def check_one_file(splits: set[str], why: str, source: str | os.PathLike | None = None) -> None:
    """A GSM8K file holds one split: refuse one where a command needs two, before any slow work. (Serving both from
    one file once put test questions, answers included, into test prompts as their worked examples.)"""
    src = source if source is not None else os.environ.get("GSM8K_DIR")
    if src and len(splits) > 1 and Path(os.path.expanduser(src)).is_file():
        via = "--gsm8k" if source is not None else "GSM8K_DIR"
        raise DataError(f"{via} {src} is one file, but the {' and '.join(sorted(splits))} splits are needed ({why}): "
                        "pass the directory holding train.jsonl and test.jsonl")


def load_gsm8k(split: str, source: str | os.PathLike | None = None) -> list[Problem]:
    """All problems of `split` ("train" or "test"), in file order."""
    if split not in SPLITS:
        raise DataError(f"unknown GSM8K split {split!r}: use one of {', '.join(SPLITS)}")
    if source is not None:
        return _from_path(Path(os.path.expanduser(source)), split)
    env = os.environ.get("GSM8K_DIR")
    if env:
        return _from_path(Path(os.path.expanduser(env)), split, "GSM8K_DIR")
    return _from_hub(split)


def questions_and_shots(split: str, source: str | os.PathLike | None, shots: int, limit: int = 0) -> tuple[list[Problem], list[Problem]]:
    """What `eval` and `sample` answer, and the worked examples of their prompts: the first `shots` train problems,
    which on the train split are therefore not asked (their answers are in the prompt). `limit` 0: all."""
    check_one_file({split} | ({"train"} if shots else set()), "the prompt's worked examples are train problems", source)
    problems = load_gsm8k(split, source)
    n = len(problems)
    problems = problems[shots if split == "train" else 0 :]
    problems = problems[:limit] if limit else problems
    if not problems:
        raise DataError(f"no questions to answer: the {split} split holds {n}, all of them the prompt's {shots} worked "
                        "examples; lower --shots or use the test split")
    examples = load_gsm8k("train", source)[:shots] if shots else []
    if len(examples) < shots:
        raise DataError(f"--shots {shots}: the train split holds only {len(examples)} problems to show")
    return problems, examples
