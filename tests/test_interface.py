"""mcts/interface.py's pick_finished: the final answer among a search's finished rollouts, by vote or by value, on
hand-set values."""
import pytest

from mcts.interface import Candidates, RolloutRecord, pick_finished, self_consistency_value


def _finished(answers):
    return [RolloutRecord(node=i + 1, text=f"t{i}", answer=a, value=0.0, finished=True, tokens=1) for i, a in enumerate(answers)]


def test_pick_finished_by_hand():
    recs = _finished(["7", "9", "7", "3"])
    # vote: 7 -> 0.2 + 0.5 = 0.7, 9 -> 0.9, 3 -> 0.9: 9 and 3 tie, 9 was found first
    assert pick_finished(recs, [0.2, 0.9, 0.5, 0.9], "vote") is recs[1]
    assert pick_finished(recs, [0.2, 0.9, 0.5, 0.9], "value") is recs[1]  # the first of the two 0.9s
    # 7 -> 1.0 wins; within it rollouts 0 and 2 tie at 0.5: the first
    assert pick_finished(recs, [0.5, 0.2, 0.5, 0.1], "vote") is recs[0]
    assert pick_finished(recs, [0.5, 0.2, 0.6, 0.1], "vote") is recs[2]
    # the votes add up: 7 twice at 0.4 (0.8) outvotes 9 once at 0.6, though 9's rollout is the best valued
    assert pick_finished(recs[:3], [0.4, 0.6, 0.4], "vote") is recs[0] and pick_finished(recs[:3], [0.4, 0.6, 0.4], "value") is recs[1]
    assert pick_finished([], [], "vote") is None
    with pytest.raises(AssertionError):
        pick_finished(recs, [0.1], "vote")


def test_pick_finished_with_the_whole_pool_prefers_the_formatted_rollout():
    """The case the pool-at-creation values got wrong, by hand (format weight 0.3). Simulation 1 found "7" twice,
    unformatted (format 0, agreement 2/2: value 0.7); simulation 2 found "7" in the format and "9" three times
    (pool 7, 7, 7, 9, 9, 9: agreement 1/2 for both answers, so 0.3 + 0.35 and 0.35)."""
    good = "<reasoning>\nadd\n</reasoning>\n<answer>\n7\n</answer>\n"
    texts, answers = ["7", "seven is 7", good, "9", "it is 9", "9 it is"], ["7", "7", "7", "9", "9", "9"]
    recs = _finished(answers)
    for r, t in zip(recs, texts):
        r.text = t
    value = self_consistency_value(0.3)
    c = lambda pools: Candidates(texts, answers, [True] * 6, pools, [0] * 6, [[1]] * 6)  # noqa: E731
    at_creation = value(c([answers[:2]] * 2 + [answers] * 4))
    assert at_creation == pytest.approx([0.7, 0.7, 0.65, 0.35, 0.35, 0.35])
    # 7 wins the vote (2.05 against 1.05) either way, but by creation-time values its unformatted first rollout
    # is chosen (0.7 > 0.65), and it is the best-valued one too
    assert pick_finished(recs, at_creation, "vote").text == "7" and pick_finished(recs, at_creation, "value").text == "7"
    final = value(c([answers] * 6))
    assert final == pytest.approx([0.35, 0.35, 0.65, 0.35, 0.35, 0.35])
    assert pick_finished(recs, final, "vote").text == good and pick_finished(recs, final, "value").text == good
