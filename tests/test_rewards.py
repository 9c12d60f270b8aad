"""The five GSM8K reward functions with hand-worked values, the RewardSet, and robustness to any string."""
import random

import pytest

from grpo.rewards import (
    RewardSet,
    correctness_reward_func,
    count_xml,
    int_reward_func,
    soft_format_reward_func,
    strict_format_reward_func,
    xmlcount_reward_func,
)

PERFECT = "<reasoning>\n6 * 7 = 42\n</reasoning>\n<answer>\n42\n</answer>\n"
NO_NEWLINE_END = PERFECT[:-1]  # what generation stopped at "</answer>" gives
LOOSE = "<reasoning>6*7</reasoning> <answer>42.0</answer> bye"


def test_correctness():
    got = correctness_reward_func([PERFECT, LOOSE, "<answer>41</answer>", "42", "<answer>$42</answer>", PERFECT[:-11]],
                                  answers=["42"] * 6)
    # "42.0" and "$42" normalise to 42; a bare "42" has no answer tag, nor has an answer cut off before </answer>
    assert got == [2.0, 2.0, 0.0, 0.0, 2.0, 0.0]
    with pytest.raises(ValueError):
        correctness_reward_func([PERFECT], answers=[])
    with pytest.raises(ValueError):  # one answer too many is as wrong as one too few
        correctness_reward_func([PERFECT], answers=["42", "42"])
    # the gold is normalised too: "1,000" and "7.50" are the numbers 1000 and 7.5
    assert correctness_reward_func(["<answer>\n1000\n</answer>", "<answer>$7.5</answer>"], answers=["1,000", "7.50"]) == [2.0, 2.0]


def test_int():
    assert int_reward_func([PERFECT, LOOSE, "<answer> -3 </answer>", "<answer>x</answer>", "none"]) == [0.5, 0.0, 0.5, 0.0, 0.0]


def test_strict_format_needs_the_exact_layout():
    # DOTALL: multi-line reasoning matches; `$` also accepts the string ending right after the final newline
    multi = "<reasoning>\nline 1\nline 2\n</reasoning>\n<answer>\n42\n</answer>\n"
    # a completion stopped at "</answer>" (the default --stop) ends without the final newline and still matches
    assert strict_format_reward_func([PERFECT, multi, NO_NEWLINE_END, LOOSE, " " + PERFECT, PERFECT + "x"]) == \
        [0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    # what the recipe's pattern (no DOTALL past the reasoning) never took, and DOTALL alone did (a review): a second
    # reasoning block, an answer over two lines or holding a tag, a second trailing newline
    twice = "<reasoning>\na\n</reasoning>\n<reasoning>\nb\n</reasoning>\n<answer>\n42\n</answer>"
    two_lines = "<reasoning>\na\n</reasoning>\n<answer>\n42\ndollars\n</answer>"
    tagged = "<reasoning>\na\n</reasoning>\n<answer>\n42</answer>\n</answer>"
    assert strict_format_reward_func([twice, two_lines, tagged, PERFECT + "\n"]) == [0.0] * 4


def test_soft_format_matches_from_the_start():
    assert soft_format_reward_func([PERFECT, LOOSE, "<reasoning>\na\nb</reasoning>\n\n<answer>x</answer>", "hi " + LOOSE]) == [0.5, 0.5, 0.5, 0.0]


def test_xmlcount_hand_worked():
    assert count_xml(PERFECT) == pytest.approx(0.5)  # 4 x 0.125, nothing after the closing tag
    # after "\n</answer>\n" come 3 chars: -0.003; after "\n</answer>" come 4 chars: -(4 - 1) * 0.001
    assert count_xml(PERFECT + "abc") == pytest.approx(0.5 - 0.003 - 0.003)
    # stopped at the closing tag: nothing after it, nothing charged (the recipe's split charged the whole text)
    assert count_xml(NO_NEWLINE_END) == pytest.approx(0.5)
    # text right after the tag, no newline: all 3 chars charged twice
    assert count_xml(NO_NEWLINE_END + "abc") == pytest.approx(0.5 - 0.003 - 0.003)
    # no closing tag at all: the opening tag's term charges the whole text, as in the recipe
    opened = "<reasoning>\nx\n</reasoning>\n<answer>\n42"
    assert count_xml(opened) == pytest.approx(0.375 - len(opened) * 0.001)
    assert count_xml("<reasoning>\n<reasoning>\n") == 0.0  # twice is not once
    # two closing tags: that term pays nothing; the opening tag's term charges what follows the LAST one ("c": 1 char)
    twice_closed = "<reasoning>\nx\n</reasoning>\n<answer>\n42\n</answer>\nab\n</answer>\nc"
    assert count_xml(twice_closed) == pytest.approx(0.375 - 0.001)
    assert xmlcount_reward_func([PERFECT, ""]) == [pytest.approx(0.5), 0.0]


def test_reward_set_weights_and_reports_each_function():
    rs = RewardSet.parse("correctness=1,xmlcount=0.5")
    out = rs([PERFECT, "nothing"], answers=["42", "1"])
    assert set(out.per_fn) == {"correctness", "xmlcount"}
    assert out.total == [pytest.approx(2.0 + 0.25), 0.0]
    full = RewardSet()([PERFECT], answers=["42"])
    assert full.total == [pytest.approx(2.0 + 0.5 + 0.5 + 0.5 + 0.5)]
    # a negative weight is a penalty (the help says so): a correct answer with correctness=-1 costs its 2.0
    assert RewardSet.parse("correctness=-1,xmlcount=0.5")([PERFECT], answers=["42"]).total == [pytest.approx(-2.0 + 0.25)]
    with pytest.raises(ValueError, match="unknown reward"):
        RewardSet.parse("accuracy=1")
    with pytest.raises(ValueError, match="bad reward weight"):
        RewardSet.parse("correctness=high")


def test_reward_spec_parsing():
    """A name without '=w' weighs 1; a zero weight beside a nonzero one is allowed (that reward is computed and
    logged, and adds 0 to the total); all zero, a repeated name or a non-finite weight is refused."""
    rs = RewardSet.parse("correctness,xmlcount=0")
    assert rs.weights == {"correctness": 1.0, "xmlcount": 0.0}
    out = rs([PERFECT], answers=["42"])
    assert out.total == [2.0] and out.per_fn["xmlcount"] == [pytest.approx(0.5)]
    assert RewardSet.parse(" ").weights == {name: 1.0 for name in ("correctness", "int", "strict_format", "soft_format", "xmlcount")}
    for bad, msg in [("correctness=0,int=0", "weighs every reward 0"), ("int=1,int=2", "given twice"),
                     ("correctness=nan", "finite"), ("correctness=inf", "finite")]:
        with pytest.raises(ValueError, match=msg):
            RewardSet.parse(bad)


def test_no_string_makes_any_reward_raise():
    rng = random.Random(0)
    pieces = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "42", "-", ".", ",", "$", "é", "\x00", "<", ">", "####"]
    texts = ["", "\n" * 5] + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    texts += ["".join(chr(rng.randint(0, 0x2FFF)) for _ in range(50)) for _ in range(100)]
    texts += ["<answer>\n" + "7" * 5000 + "\n</answer>"]  # a runaway answer past Python's 4300-digit int-to-str limit
    out = RewardSet()(texts, answers=["42"] * len(texts))
    assert len(out.total) == len(texts) and all(isinstance(v, float) for v in out.total)
