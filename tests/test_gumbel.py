"""Gumbel root selection with Sequential Halving (mcts/gumbel.py): hand-worked schedules and scores, a bandit,
and the search with it on a tiny random model."""
import pytest
import torch
from helpers import tiny_hf_model, tiny_tokenizer

from data import encode_prompts
from mcts.gumbel import choose_root_child, considered_table, considered_visits, final_root_child, root_scores, sigma_q
from mcts.search import SearchConfig, search
from model_io.convert import from_hf_model


def test_schedule_hand_worked():
    # m=4, n=8: 2 rounds; 4 candidates get 8 // (2*4) = 1 simulation each, then the best 2 get 8 // (2*2) = 2
    assert considered_visits(4, 8) == [0, 0, 0, 0, 1, 1, 2, 2]
    # m=3, n=6: 3 candidates once (6 // 6), then 2 candidates once (6 // 4), then again
    assert considered_visits(3, 6) == [0, 0, 0, 1, 1, 2]
    # m=2, n=5: one round of 5 // 2 = 2 visits each, repeated while simulations remain
    assert considered_visits(2, 5) == [0, 0, 1, 1, 2]
    assert considered_visits(1, 4) == [0, 1, 2, 3]  # one candidate takes every simulation


def test_table_rows_start_after_the_creating_simulation():
    t = considered_table(4, 4)  # 4 simulations after the children were created
    assert t.shape == (5, 8)
    assert t[4].tolist() == considered_visits(4, 8)  # columns 4..7 are simulations 1..4
    assert t[2].tolist() == considered_visits(2, 6) + [considered_visits(2, 6)[-1]] * 2  # padded
    assert t[2, 2:6].tolist() == [1, 1, 2, 2]


def test_sigma_q_hand_worked():
    q = torch.tensor([[0.2, 0.6, 1.0, 7.0]])
    valid = torch.tensor([[True, True, True, False]])  # the invalid slot's value must not enter the min-max
    sims = torch.tensor([[1, 3, 2, 9]])
    # q_hat = (q - 0.2) / 0.8 = [0, 0.5, 1]; (c_visit + max n) * c_scale = (50 + 3) * 1
    assert torch.allclose(sigma_q(q, valid, sims, 50.0, 1.0)[0, :3], torch.tensor([0.0, 26.5, 53.0]))
    same = sigma_q(torch.full((1, 3), 0.4), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.long), 50.0, 1.0)
    assert torch.equal(same, torch.zeros(1, 3))  # no spread, no preference
    s = root_scores(torch.zeros(1, 4), torch.zeros(1, 4), q, valid, sims, 50.0, 0.1)
    assert torch.allclose(s[0, :3], torch.tensor([0.0, 2.65, 5.3])) and s[0, 3] == float("-inf")


def test_choice_follows_the_schedule():
    scores = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    sims = torch.tensor([[2, 1, 2, 2]])
    assert choose_root_child(scores, valid, sims, torch.tensor([2])).item() == 3  # slot 1 (best) is not due
    assert choose_root_child(scores, valid, sims, torch.tensor([1])).item() == 1
    assert choose_root_child(scores, valid, sims, torch.tensor([5])).item() == 1  # none due: the least simulated
    assert final_root_child(torch.tensor([[9.0, 1.0, 2.0, 10.0]]), valid, torch.tensor([[2, 3, 3, 1]])).item() == 2


def test_bandit_halving_finds_the_best_arm():
    """4 Bernoulli arms under the root (means .2 .4 .5 .8, equal priors), 16 simulations after one pull each:
    Sequential Halving ends on the best arm in most of 200 independent runs, and spends the most pulls on it."""
    means = torch.tensor([0.2, 0.4, 0.5, 0.8])
    R, K, n = 200, 4, 16
    gen = torch.Generator().manual_seed(0)
    g = -torch.log(-torch.log(torch.rand(R, K, generator=gen)))
    table = considered_table(K, n)
    sims = torch.ones(R, K, dtype=torch.long)
    total = (torch.rand(R, K, generator=gen) < means).float()  # the creating pull
    valid = torch.ones(R, K, dtype=torch.bool)
    logp = torch.full((R, K), -torch.log(torch.tensor(4.0)))
    r = torch.arange(R)
    for s in range(1, n + 1):
        slot = choose_root_child(root_scores(g, logp, total / sims, valid, sims, 50.0, 1.0), valid, sims, table[4, 4 + s - 1].expand(R))
        total[r, slot] += (torch.rand(R, generator=gen) < means[slot]).float()
        sims[r, slot] += 1
    assert sims.sum() == R * (K + n)
    pick = final_root_child(root_scores(g, logp, total / sims, valid, sims, 50.0, 1.0), valid, sims)
    assert (pick == 3).float().mean() > 0.6  # uniform guessing: 0.25
    assert sims[:, 3].float().mean() > sims[:, 0].float().mean() + 2


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = from_hf_model(tiny_hf_model("llama", dtype=torch.float64))
    prompts = encode_prompts(tok, ["What is 2+2?", "How many legs have 3 cats?", "Add 5 and 7."])
    return model, tok, prompts


def cfg(**kw):
    base = dict(n_simulations=6, children=3, step="tokens:4", rollout_depth=2, max_new_tokens=20, temperature=1.0, root="gumbel")
    return SearchConfig(**{**base, **kw})


def test_gumbel_search_spreads_root_simulations_by_the_schedule(setup):
    model, tok, prompts = setup
    res = search(model, tok, prompts, cfg(), question_ids=[0, 1, 2], keep_trees=True)
    for r in res:
        nodes = r.tree["nodes"]
        root_kids = [n for n in nodes if n["parent"] == 0]
        deeper = [n for n in nodes if n["parent"] > 0]
        assert len(root_kids) == 3 and deeper  # later simulations went below the root's children
        # 5 simulations after the creating one, 3 children: schedule considered_visits(3, 8) =
        # [0, 0, 0, 1, 1, 2, 2, 3]; columns 3..7 say the best child, then the better of the other two, then
        # those two in turn: exactly two root children get simulations (visits above their creating rollout's 1)
        assert sum(k["visits"] > 1 for k in root_kids) == 2, nodes


def test_gumbel_search_is_batch_independent(setup):
    model, tok, prompts = setup
    c = cfg(step="newline", step_tokens=5)
    together = search(model, tok, prompts, c, question_ids=[10, 11, 12], keep_trees=True)
    for i, p in enumerate(prompts):
        alone = search(model, tok, [p], c, question_ids=[10 + i], keep_trees=True)[0]
        assert alone.text == together[i].text
        # same nodes, texts, visits and decisions; priors agree to float32 rounding (batched matmuls of other
        # sizes round the log-probs differently in the last bits)
        for x, y in zip(alone.tree["nodes"], together[i].tree["nodes"], strict=True):
            assert {k: v for k, v in x.items() if k != "prior"} == {k: v for k, v in y.items() if k != "prior"}
            assert x["prior"] == pytest.approx(y["prior"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("mode", ["vote", "visits"])
def test_gumbel_answer_modes_and_one_simulation(setup, mode):
    model, tok, prompts = setup
    for n in (1, 4):
        res = search(model, tok, prompts[:2], cfg(answer=mode, n_simulations=n, max_new_tokens=12))
        assert all(isinstance(r.text, str) and r.nodes > 1 for r in res)


def test_bad_root_rule():
    with pytest.raises(ValueError, match="root selection"):
        SearchConfig(root="ucb")
