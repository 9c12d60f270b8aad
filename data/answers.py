"""Numbers in GSM8K answers: the gold answer, and predictions parsed strictly or leniently.

  gold:     "...\\n#### 1,234"                    -> "1234"
  strict:   the content of the last <answer>...</answer>, which must be a bare number ($, commas, a trailing
            period and surrounding spaces allowed)
  lenient:  the last number anywhere in the text
All three are normalised the same way, so "18.00", "$18" and "18." compare equal to "18".
A digit is any Unicode decimal digit (a Python regex's digit class, which `Decimal` reads too): a full-width "７２" is 72.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
# a number as people write it: optional sign, optional $ (and a space after it), digits with optional thousands
# commas, optional decimals. A minus is a sign only where it cannot be subtraction or a list dash: not after a
# word character or a closing bracket ("20-5", "f(x)-3"), and never with a space before the digits ("20 - 5",
# "- 12 apples" read as 5 and 12, not -5 and -12). Thousands may also be grouped by single spaces ("1 000", as SI
# style writes them), the same in strict and lenient parsing.
SIGN = r"(?:(?<![\w)\]])-)?"
NUMBER = re.compile(SIGN + r"(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d{1,3}(?: \d{3})+(?!\d| \d)|\d+)(?:\.\d+)?|"
                    + SIGN + r"\$?\.\d+")
GOLD_MARK = "####"


def normalize_number(text: str | None) -> str | None:
    """Canonical string of a number written in `text`, or None if `text` is not a bare number.

    "$1,234.50" -> "1234.5", "18.00" -> "18", "-3." -> "-3", "0.0" -> "0", "1 000" -> "1000", "3 4" -> None,
    "abc" -> None."""
    if text is None:
        return None
    s = re.sub(r"\$\s+", "$", text.strip()).replace("$", "")
    if " " in s and not re.fullmatch(r"[-+]?\d{1,3}( \d{3})+(\.\d*)?", s):
        return None  # spaces only as thousands separators: "3 4" is not 34
    s = s.replace(" ", "")
    if "," in s and not re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?\.?", s):
        return None  # commas only as thousands separators: "1,5" is not 15
    s = s.replace(",", "").rstrip(".")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == 0:
        return "0"  # also "-0" and "-0.0"
    # exact digits: str(int(d)) raises past 4300 digits (Python's int-to-str limit) and d.normalize() rounds to
    # the context's 28 significant digits, by which 0.999...9 (30 nines) would equal 1
    out = format(d, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def extract_gold(solution: str) -> str:
    """The normalised number after `####` in a GSM8K solution."""
    if GOLD_MARK not in solution:
        raise ValueError("GSM8K solution has no '####' answer line")
    gold = normalize_number(solution.rsplit(GOLD_MARK, 1)[1])
    if gold is None:
        raise ValueError(f"GSM8K answer {solution.rsplit(GOLD_MARK, 1)[1].strip()!r} is not a number")
    return gold


def answer_content(text: str) -> str | None:
    """Raw content of the last <answer>...</answer>, stripped; None without a closed answer tag.

    The last of the pairs `re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)` finds, in one pass: that regex
    retries from every unclosed <answer> to the end of the text (quadratic on a completion looping the tag)."""
    last, pos = None, 0
    while (start := text.find(OPEN_TAG, pos)) >= 0:
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end < 0:
            break  # no closing tag after this opening one, so none after any later one either
        last, pos = text[start + len(OPEN_TAG) : end], end + len(CLOSE_TAG)
    return None if last is None else last.strip()


def parse_strict(text: str) -> str | None:
    return normalize_number(answer_content(text))


def parse_lenient(text: str) -> str | None:
    found = NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None
