"""The tensor tree without any model: hand-worked PUCT and backups, a bandit, two levels, batch independence."""
import math

import pytest
import torch

from mcts import NO_PARENT, ROOT, UNEXPANDED, Tree, backup, expand, puct_scores, revalue, select


def test_empty_tree_has_only_an_unexpanded_root():
    t = Tree.empty(2, 10, 3)
    assert t.num_nodes.tolist() == [1, 1] and (t.parent == NO_PARENT).all() and (t.children == UNEXPANDED).all()
    assert (t.visits == 0).all() and select(t, 1.0).tolist() == [ROOT, ROOT]


def test_expand_appends_children_in_order():
    t = Tree.empty(2, 10, 3)
    ids = expand(t, torch.tensor([0, 0]), torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]]),
                 valid=torch.tensor([[True, True, True], [True, False, True]]))
    assert ids.tolist() == [[1, 2, 3], [1, UNEXPANDED, 2]]
    assert t.num_nodes.tolist() == [4, 3]
    assert t.children[1, 0].tolist() == [1, UNEXPANDED, 2]
    assert t.parent[0, 1:4].tolist() == [0, 0, 0] and t.depth[0, 1:4].tolist() == [1, 1, 1]
    assert t.prior[1, 1:3].tolist() == pytest.approx([0.6, 0.0])
    with pytest.raises(ValueError, match="tree full"):
        expand(Tree.empty(1, 3, 3), torch.tensor([0]), torch.full((1, 3), 1 / 3))


def test_puct_hand_worked():
    t = Tree.empty(1, 10, 3)
    expand(t, torch.tensor([0]), torch.tensor([[0.5, 0.3, 0.2]]))
    # visits: root 4 (one of which was its own expansion), child 1: 2 visits value 1.0; child 2: 1 visit value 0.9
    backup(t, torch.tensor([[1, 1, 2]]), torch.tensor([[0.6, 0.4, 0.9]]))
    backup(t, torch.tensor([0]), torch.tensor([0.1]))
    # root: N = 4, Q = (0.6 + 0.4 + 0.9 + 0.1) / 4 = 0.5
    # child 1: Q = 0.5, u = 1.5 * 0.5 * sqrt(4) / 3 = 0.5  -> 1.0
    # child 2: Q = 0.9, u = 1.5 * 0.3 * 2 / 2 = 0.45       -> 1.35
    # child 3: unvisited, Q = parent's 0.5, u = 1.5 * 0.2 * 2 / 1 = 0.6 -> 1.1
    s = puct_scores(t, torch.tensor([0]), 1.5)
    assert s[0].tolist() == pytest.approx([1.0, 1.35, 1.1])
    assert select(t, 1.5).tolist() == [2]
    # with c_puct = 0 only Q counts: child 2 (0.9) again; the unvisited child ties the parent's 0.5 with child 1
    assert select(t, 0.0).tolist() == [2]


def test_a_node_with_a_missing_child_slot_is_expanded_and_the_slot_never_scores():
    """Tree search leaves a child slot empty where a sibling's step repeats an earlier one (mcts/search.py). Root
    with N = 1, Q = 0: slot 0 (prior 0.2) and slot 2 (prior 0.1) hold unvisited children, slot 1 (prior 0.7) none.
    PUCT: Q = parent's 0, u = 1.0 * P * sqrt(1) / (1 + 0) -> [0.2, -inf, 0.1]; the root is not a leaf, so selection
    descends to node 1 (slot 0)."""
    t = Tree.empty(1, 10, 3)
    expand(t, torch.tensor([0]), torch.tensor([[0.2, 0.7, 0.1]]), valid=torch.tensor([[True, False, True]]))
    backup(t, torch.tensor([0]), torch.tensor([0.0]))
    assert puct_scores(t, torch.tensor([0]), 1.0)[0].tolist() == pytest.approx([0.2, float("-inf"), 0.1])
    assert not t.is_leaf(torch.tensor([0])).item() and select(t, 1.0).tolist() == [1]


def test_ties_go_to_the_lowest_child():
    t = Tree.empty(1, 5, 3)
    expand(t, torch.tensor([0]), torch.full((1, 3), 1 / 3))
    backup(t, torch.tensor([0]), torch.tensor([0.0]))
    assert select(t, 1.0).tolist() == [1]


def test_backup_hand_worked_two_levels():
    t = Tree.empty(1, 10, 2)
    a, _ = expand(t, torch.tensor([0]), torch.tensor([[0.5, 0.5]]))[0].tolist()
    c = expand(t, torch.tensor([a]), torch.tensor([[0.7, 0.3]]))[0, 0].item()
    backup(t, torch.tensor([c]), torch.tensor([1.0]))
    backup(t, torch.tensor([a]), torch.tensor([0.5]))
    assert t.visits[0, :5].tolist() == [2, 2, 0, 1, 0]
    assert t.value_sum[0, :5].tolist() == pytest.approx([1.5, 1.5, 0, 1.0, 0])
    assert t.depth[0, c].item() == 2 and t.parent[0, c].item() == a
    # at the root (N 2, Q 0.75): a scores 0.75 + 0.5 * sqrt(2) / 3 = 0.986; the unvisited node 2 scores
    # 0.75 (its parent's Q) + 0.5 * sqrt(2) / 1 = 1.457, so selection stops at node 2
    assert select(t, 1.0).tolist() == [2]
    # with a small c_puct: 0.75 + 0.1 * 0.236 vs 0.75 + 0.1 * 0.707 -> still node 2; with c_puct 0 a tie -> a,
    # and inside a (N 2, Q 0.75): c (Q 1.0) beats its unvisited sibling (Q 0.75)
    assert select(t, 0.0).tolist() == [c]


def test_revalue_hand_worked():
    """Root -> a, b; a -> c. Backed up: 1.0 from c, 0.5 from a, and 0.2 from b three times (a finished b revisited).
    Rebuilt with the same values: value_sum as backup left it. Rebuilt after c's value became 0.4 and b's 0.6:
    c 0.4; a 0.4 + 0.5 = 0.9; b 3 x 0.6 = 1.8; root 0.9 + 1.8 = 2.7. Visits never change (5 at the root)."""
    t = Tree.empty(1, 10, 2)
    a, b = expand(t, torch.tensor([0]), torch.tensor([[0.5, 0.5]]))[0].tolist()
    c = expand(t, torch.tensor([a]), torch.tensor([[1.0, 0.0]]), valid=torch.tensor([[True, False]]))[0, 0].item()
    backup(t, torch.tensor([[c, a, b]]), torch.tensor([[1.0, 0.5, 0.2]]))
    backup(t, torch.tensor([[b, b]]), torch.tensor([[0.2, 0.2]]))
    before, visits = t.value_sum.clone(), t.visits.clone()
    node = torch.tensor([[c, a, b, UNEXPANDED]])  # [B, M]: the last slot is unused
    weight = torch.tensor([[1.0, 1.0, 3.0, 0.0]])
    revalue(t, node, torch.tensor([[1.0, 0.5, 0.2, 9.0]]), weight)
    assert torch.allclose(t.value_sum, before) and torch.equal(t.visits, visits)
    revalue(t, node, torch.tensor([[0.4, 0.5, 0.6, 9.0]]), weight)
    assert t.value_sum[0, [ROOT, a, b, c]].tolist() == pytest.approx([2.7, 0.9, 1.8, 0.4])
    assert torch.equal(t.visits, visits) and t.visits[0, ROOT].item() == 5


def test_terminal_nodes_stop_selection_and_are_never_expanded():
    t = Tree.empty(1, 10, 2)
    expand(t, torch.tensor([0]), torch.tensor([[0.9, 0.1]]), terminal=torch.tensor([[True, False]]))
    backup(t, torch.tensor([1]), torch.tensor([1.0]))
    assert select(t, 1.0).tolist() == [1]
    assert expand(t, torch.tensor([1]), torch.tensor([[0.5, 0.5]])).tolist() == [[UNEXPANDED, UNEXPANDED]]


def run_bandit(arm_values, sims=60, c_puct=1.0):
    """K arms under the root; pulling an arm backs up its fixed value. B trees at once, one bandit each."""
    values = torch.tensor(arm_values)  # [B, K]
    B, K = values.shape
    t = Tree.empty(B, 1 + K, K)
    expand(t, torch.zeros(B, dtype=torch.long), torch.full((B, K), 1 / K))
    for _ in range(sims):
        leaf = select(t, c_puct)  # [B]
        backup(t, leaf, values[torch.arange(B), leaf - 1])
    return t


def test_bandit_visits_concentrate_on_the_best_arm():
    t = run_bandit([[0.2, 0.8, 0.5], [0.9, 0.1, 0.3]], sims=100)
    visits = t.visits[:, 1:4]
    assert visits.argmax(-1).tolist() == [1, 0]
    assert (visits.max(-1).values > 0.6 * 100).all()
    assert t.visits[:, 0].tolist() == [100, 100]


def test_batch_elements_are_independent():
    """Searching B trees together gives the same trees as searching each alone."""
    arms = [[0.2, 0.8, 0.5], [0.9, 0.1, 0.3], [0.5, 0.5, 0.6]]
    together = run_bandit(arms, sims=30)
    for i, a in enumerate(arms):
        alone = run_bandit([a], sims=30)
        for f in ("visits", "value_sum", "prior", "parent", "depth", "children", "num_nodes"):
            assert torch.equal(getattr(together, f)[i], getattr(alone, f)[0]), f


def test_deeper_search_with_a_random_value_is_batch_independent():
    def search(seeds):
        B, K = len(seeds), 3
        t = Tree.empty(B, 1 + 20 * K, K)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for _ in range(20):
            leaf = select(t, 1.25)
            prior = torch.stack([torch.rand(K, generator=g) for g in gens]).softmax(-1)
            kids = expand(t, leaf, prior)
            value = torch.stack([torch.rand(K, generator=g) for g in gens])
            backup(t, kids, value)  # [B, K]: one value per new child, all at once
        return t

    together = search([1, 2, 3])
    for i, s in enumerate([1, 2, 3]):
        alone = search([s])
        assert torch.equal(together.children[i], alone.children[0]) and torch.allclose(together.value_sum[i], alone.value_sum[0])
    assert together.depth.max() >= 2 and (together.num_nodes == 61).all()
    # every node's visits equal the visits of its children plus the backups that ended at it
    t = together
    for b in range(3):
        for n in range(int(t.num_nodes[b])):
            kids = [k for k in t.children[b, n].tolist() if k != UNEXPANDED]
            assert t.visits[b, n] >= sum(t.visits[b, k] for k in kids)
    assert math.isclose(float(t.visits[0, 0]), 60.0)
