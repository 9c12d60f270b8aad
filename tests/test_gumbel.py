"""Gumbel root selection with Sequential Halving (mcts/gumbel.py): hand-worked schedules and scores, a bandit.
The search with it on a tiny model: tests/test_search.py."""
import torch

from mcts.gumbel import choose_root_child, considered_table, considered_visits, final_root_child, root_scores, sigma_q


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


def test_root_scores_add_gumbel_noise_log_prior_and_sigma_hand_worked():
    """Eq. 8 of Danihelka et al. 2022 at the root: g(a) + logits(a) + sigma(q_hat(a)), with logits = log prior.
    g = [1.5, 0, -3], prior [0.5, 0.25, 0.25]: log prior = [-0.6931, -1.3863, -1.3863]; q = [0.2, 0.6, 1.0] ->
    q_hat = [0, 0.5, 1]; sims [1, 2, 1]: (c_visit + max n) * c_scale = (50 + 2) * 0.1 = 5.2 -> sigma = [0, 2.6, 5.2].
    Sum: [0.8069, 1.2137, 0.8137]. Each term enters with its own sign and weight: without g the order changes
    (child 2 best: 3.81 > 1.21 > -0.69), with -log prior the values change."""
    g = torch.tensor([[1.5, 0.0, -3.0]])
    log_prior = torch.tensor([[0.5, 0.25, 0.25]]).log()
    q = torch.tensor([[0.2, 0.6, 1.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    sims = torch.tensor([[1, 2, 1]])
    s = root_scores(g, log_prior, q, valid, sims, 50.0, 0.1)
    assert torch.allclose(s, torch.tensor([[0.8069, 1.2137, 0.8137]]), atol=1e-4)
    assert choose_root_child(s, valid, sims, torch.tensor([1])).item() == 2  # due: children 0 and 2; 0.8137 > 0.8069
    assert final_root_child(s, valid, sims).item() == 1  # the most simulated child


def test_sigma_q_min_max_ignores_invalid_slots_on_both_sides():
    """q_hat = (q - min) / (max - min) over the valid children only: q [0.2, 0.6, 1.0] valid, an invalid slot
    holding -5 (below them) must not stretch the range: q_hat stays [0, 0.5, 1] -> sigma (50 + 1) * [0, .5, 1]."""
    q = torch.tensor([[0.2, 0.6, 1.0, -5.0]])
    valid = torch.tensor([[True, True, True, False]])
    sims = torch.ones(1, 4, dtype=torch.long)
    assert torch.allclose(sigma_q(q, valid, sims, 50.0, 1.0)[0, :3], torch.tensor([0.0, 25.5, 51.0]))


def test_only_children_with_exactly_the_scheduled_count_are_due():
    """Sequential Halving (Danihelka et al. 2022, section 4): within a round, a child that already had this round's
    simulation (count above the schedule's) waits, even if it scores best. sims [2, 1, 1, 2], considered 1: due are
    children 1 and 2 only -> child 2 (score 3), not child 0 (score 9, count 2) nor child 3."""
    scores = torch.tensor([[9.0, 1.0, 3.0, 0.0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    sims = torch.tensor([[2, 1, 1, 2]])
    assert choose_root_child(scores, valid, sims, torch.tensor([1])).item() == 2
    assert choose_root_child(scores, valid, sims, torch.tensor([2])).item() == 0


def test_search_scores_its_root_children_with_log_prior_and_mean_value():
    """mcts/search.py's `_gumbel_scores` reads eq. 8's inputs off the tree: logit = log prior, q = each root child's
    mean value. Root children with priors [0.5, 0.3, 0.2] and one backed-up value each, [0.2, 0.6, 1.0]; one
    simulation each (max n 1), c_visit 50, c_scale 0.1: sigma = 5.1 * [0, 0.5, 1] = [0, 2.55, 5.1];
    g = [0.3, -0.4, 0.1], log prior = [-0.6931, -1.2040, -1.6094] -> [-0.3931, 0.9460, 3.5906]."""
    from mcts.interface import SearchConfig
    from mcts.search import _gumbel_scores
    from mcts.tree import Tree, backup, expand

    t = Tree.empty(1, 5, 3)
    expand(t, torch.tensor([0]), torch.tensor([[0.5, 0.3, 0.2]]))
    backup(t, torch.tensor([[1, 2, 3]]), torch.tensor([[0.2, 0.6, 1.0]]))
    cfg = SearchConfig(root="gumbel", gumbel_c_visit=50.0, gumbel_c_scale=0.1)
    s = _gumbel_scores(t, torch.tensor([[0.3, -0.4, 0.1]]), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.long), cfg)
    assert torch.allclose(s, torch.tensor([[-0.3931, 0.9460, 3.5906]]), atol=1e-4)
