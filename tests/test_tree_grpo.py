"""MCTS-augmented GRPO: step advantages by hand, tree groups, P=0 is the plain trainer bitwise, tree rollouts learn."""
import dataclasses

import pytest
import torch
from helpers import make_trainer

from grpo.tree_rollout import collect_tree, merge, node_values, step_advantages, use_tree, with_batch_std


def test_step_advantages_on_a_fixed_tree_by_hand():
    # root 0 -> a 1, b 2; a -> c 3, d 4.  Finished trajectories end at c (reward 1), c (reward 0), d (1), b (0)
    parent = torch.tensor([-1, 0, 0, 1, 1])
    leaf = torch.tensor([3, 3, 4, 2])
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0])
    V = node_values(parent, leaf, reward)
    # V(root) = 2/4 = 0.5; V(a) = (1 + 0 + 1)/3 = 2/3; V(b) = 0; V(c) = 1/2; V(d) = 1
    assert V.tolist() == pytest.approx([0.5, 2 / 3, 0.0, 0.5, 1.0])
    A = step_advantages(parent, V)
    # A(a) = 2/3 - 1/2 = 1/6; A(b) = -1/2; A(c) = 1/2 - 2/3 = -1/6; A(d) = 1 - 2/3 = 1/3; root 0
    assert A.tolist() == pytest.approx([0.0, 1 / 6, -0.5, -1 / 6, 1 / 3])
    # along a path the step advantages telescope to the trajectory's node value minus the root's: d: 1/6 + 1/3
    assert float(A[1] + A[4]) == pytest.approx(float(V[4] - V[0]))


def test_step_credit_counts_rollouts_cut_off_by_the_token_limit(monkeypatch):
    """Root 0 -> a 1, b 2. Through a: one finished rollout (reward 1), two cut off by the token limit (reward 0);
    through b: one cut off (0). V(root) = 1/4, V(a) = 1/3, V(b) = 0, so A(a) = 1/12 and A(b) = -1/4. Counting only
    finished rollouts gave V(root) = V(a) = 1: A(a) = 0 (the step whose continuations mostly ran out is not marked
    down) and A(b) = -1 (a node without finished rollouts taken as V = 0)."""
    import grpo.tree_rollout as tr_mod
    from data import Problem
    from grpo.rewards import RewardSet
    from mcts.interface import RolloutRecord, SearchConfig, SearchResult

    recs = [RolloutRecord(node, f"t{i}", None, value, fin, 4, [10 + i, 20 + i, 30 + i, 40 + i], [-1.0] * 4, [node])
            for i, (node, value, fin) in enumerate([(1, 1.0, True), (1, 0.0, False), (1, 0.0, False), (2, 0.0, False)])]
    found = SearchResult("t0", None, 4, "stop", 16, 16, 3, records=recs, step_len=[0, 2, 2], parent=[-1, 0, 0])
    monkeypatch.setattr(tr_mod, "search", lambda *a, **k: [found])

    class Tok:
        pad_token_id = 0

    rs = RewardSet({"one": 1.0}, {"one": lambda texts, **_: [1.0] * len(texts)})
    ro, _ = collect_tree(None, Tok(), [Problem("q", "0", "", 0)], [[1, 2]], [0], 4, SearchConfig(), rs, 0, 0, "step")
    assert ro.finish == ["stop", "length", "length", "length"]  # the finished rollout first, then creation order
    want = [1 / 12, 1 / 12, 1 / 12, -1 / 4]  # each row's nodes: a, a, a, b (all 4 tokens under one node)
    assert ro.token_advantages.tolist() == [[pytest.approx(w)] * 4 for w in want]


def _fake_tree_search(monkeypatch, seen_values):
    """A search that returns a fixed tree, scoring its rollouts with the value function collect_tree passes it.
    Root 0 -> a 1 (2 tokens), b 2 (1 token); a -> c 3 (1 token). Rollouts in creation order:
      r0 path a,c, 6 ids, "win",  finished      r1 path a, 4 ids, "lose", finished
      r2 path b,   3 ids, "win",  cut off       r3 path a,c, 5 ids, "lose", finished"""
    import grpo.tree_rollout as tr_mod
    from mcts.interface import Candidates, RolloutRecord, SearchResult

    spec = [(3, [1, 3], 6, "win", True), (1, [1], 4, "lose", True), (2, [2], 3, "win", False), (3, [1, 3], 5, "lose", True)]

    def search(model, tok, prompts, scfg, seeds, seed, value):
        ids = [[10 * i + t + 1 for t in range(n)] for i, (_, _, n, _, _) in enumerate(spec)]
        texts = [text for *_, text, _ in spec]
        vals = value(Candidates(texts, [None] * 4, [f for *_, f in spec], [[]] * 4, [0] * 4, ids))
        seen_values.extend(vals)
        recs = [RolloutRecord(node, text, None, v, fin, len(i), i, [-1.0] * len(i), path)
                for (node, path, _, text, fin), i, v in zip(spec, ids, vals)]
        return [SearchResult("win", None, 6, "stop", 10, 10, 4, records=recs, step_len=[0, 2, 1, 1], parent=[-1, 0, 0, 1])]

    monkeypatch.setattr(tr_mod, "search", search)


@pytest.mark.parametrize("advantage", ["step", "mix"])
def test_token_advantages_follow_each_rollouts_path_by_hand(monkeypatch, advantage):
    """Rewards: "win" 2 x 1 = 2, "lose" 0 (weights score=2, penalty=-1; the penalty pays 0). The search sees each
    reward divided by the sum of the positive weights, 2: values 1, 0, 1, 0; collect_tree multiplies them back.
    V (mean reward of the rollouts through a node): root (2+0+2+0)/4 = 1, a (r0, r1, r3) 2/3, b (r2) 2, c (r0, r3) 1.
    A(n) = V(n) - V(parent): A(a) = -1/3, A(b) = +1, A(c) = +1/3. Rows: finished first (r0, r1, r3), then r2.
    A token takes its node's A; tokens after the path (the rollout's tail) take the last node's:
      r0: a a c | tail x3 -> [-1/3, -1/3, 1/3, 1/3, 1/3, 1/3];  r1: a a | tail x2 -> [-1/3] * 4
      r3: a a c | tail x2 -> [-1/3, -1/3, 1/3, 1/3, 1/3];       r2: b | tail x2 -> [1] * 3
    Outcome (--adv-scale none, Dr. GRPO: r - mean): group rewards [2, 0, 0, 2], mean 1 -> [1, -1, -1, 1].
    mix = outcome + 0.5 * step."""
    from data import Problem
    from grpo.rewards import RewardSet
    from grpo.tree_rollout import collect_tree
    from mcts.interface import SearchConfig

    seen = []
    _fake_tree_search(monkeypatch, seen)

    class Tok:
        pad_token_id = 0

    rs = RewardSet({"score": 2.0, "penalty": -1.0}, {"score": lambda texts, **_: [float(t == "win") for t in texts],
                                                     "penalty": lambda texts, **_: [0.0] * len(texts)})
    ro, _ = collect_tree(None, Tok(), [Problem("q", "0", "", 0)], [[1, 2]], [0], 4, SearchConfig(), rs, 0, 0, advantage,
                         0.5, "none")
    assert seen == [1.0, 0.0, 1.0, 0.0]  # rewards / 2, the sum of the positive weights
    assert ro.finish == ["stop", "stop", "stop", "length"]
    assert ro.rewards.tolist() == [[2.0, 0.0, 0.0, 2.0]] and ro.advantages.tolist() == [[1.0, -1.0, -1.0, 1.0]]
    t = 1 / 3
    step = [[-t, -t, t, t, t, t], [-t] * 4, [-t, -t, t, t, t], [1.0] * 3]
    outcome = [1.0, -1.0, -1.0, 1.0]
    want = step if advantage == "step" else [[o + 0.5 * a for a in row] for o, row in zip(outcome, step)]
    for r in range(4):
        n = len(want[r])
        assert ro.mask[r].sum() == n and (ro.token_advantages[r, n:] == 0).all()
        assert ro.token_advantages[r, :n].tolist() == pytest.approx(want[r]), r


def test_search_config_sizes_the_search_for_the_group():
    """--mcts-sims 0: two simulations per needed expansion, ceil(G / K) expansions: G = 8, K = 3 -> 2 * 3 = 6.
    Rollouts run to the token limit: rollout_depth = ceil(max_new_tokens / step) = ceil(10 / 4) = 3 steps."""
    from grpo.tree_rollout import search_config

    cfg = search_config(8, 10, 1.0, 1.0, "", 0, 3, 1.0, "tokens:4", 48)
    assert cfg.n_simulations == 6 and cfg.rollout_depth == 3 and cfg.children == 3
    assert search_config(8, 10, 1.0, 1.0, "", 5, 3, 1.0, "tokens:4", 48).n_simulations == 5  # given: kept
    assert search_config(8, 100, 1.0, 1.0, "", 0, 8, 1.0, "newline", 48).rollout_depth == 3  # a newline step: its cap, 48


def test_use_tree_probability():
    assert not any(use_tree(0, s, i, 0.0) for s in range(10) for i in range(10))
    assert all(use_tree(0, s, i, 1.0) for s in range(10) for i in range(10))
    frac = sum(use_tree(0, s, i, 0.3) for s in range(20) for i in range(50)) / 1000
    assert 0.25 < frac < 0.35


@pytest.mark.parametrize("advantage", ["outcome", "step", "mix"])
def test_tree_groups_and_their_token_advantages(tmp_path, advantage):
    tr = make_trainer(tmp_path, dtype=torch.float64, rollouts="mcts", tree_advantage=advantage, max_new_tokens=8,
                      mcts_step="tokens:2", mcts_children=4)
    idx = tr.step_indices(0)
    ro, stats = collect_tree(tr.model, tr.tok, [tr.train_set[i] for i in idx], tr.prompts(idx), idx, 8, tr.search_cfg,
                             tr.rewards, 0, 0, advantage, 0.5)
    B, G = 4, 8
    assert ro.rewards.shape == (B, G) and ro.completions.shape[0] == B * G and ro.token_advantages.shape == ro.mask.shape
    assert stats.groups == B and stats.generated_tokens > 0
    for b in range(B):  # distinct trajectories in each group
        rows = [tuple(ro.completions[b * G + g][ro.mask[b * G + g]].tolist()) for g in range(G)]
        assert len(set(rows)) == G
    if advantage == "outcome":
        assert torch.allclose(ro.token_advantages, ro.advantages.flatten()[:, None] * ro.mask)
    assert (ro.token_advantages[~ro.mask] == 0).all()
    # the sampler's log-probs of every trajectory token are the policy's (path tokens included)
    from grpo.rollout import completion_logprobs

    T = int(ro.mask.sum(-1).max())
    lp, _ = completion_logprobs(tr.model, ro, torch.arange(B * G), T, tr.tok.pad_token_id)
    assert torch.allclose(lp[ro.mask[:, :T]], ro.old_logp[:, :T][ro.mask[:, :T]], atol=1e-5)
    both = merge([ro, ro], tr.tok.pad_token_id)
    assert both.completions.shape[0] == 2 * B * G and both.rewards.shape == (2 * B, G)


def test_mcts_prob_zero_is_the_plain_trainer_bitwise(tmp_path):
    plain = make_trainer(tmp_path / "plain", beta=0.04)
    tree0 = make_trainer(tmp_path / "tree0", beta=0.04, rollouts="mcts", mcts_prob=0.0)
    for _ in range(3):
        a, b = plain.train_step(), tree0.train_step()
        assert a["reward"] == b["reward"]
    for (n, p), (_, q) in zip(plain.model.named_parameters(), tree0.model.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("advantage", ["outcome", "mix"])
def test_tree_rollouts_learn_the_synthetic_task(tmp_path, advantage):
    tr = make_trainer(tmp_path, steps=60, lr=1e-2, rollouts="mcts", tree_advantage=advantage, tree_advantage_weight=0.5,
                      mcts_step="tokens:2", mcts_children=4)
    rewards = [tr.train_step()["reward"]]
    while tr.step < 60 and rewards[-1] < 0.85:
        m = tr.train_step()
        rewards.append(m["reward"])
    assert rewards[0] < 0.4, rewards[0]
    assert max(rewards[-3:]) > 0.8, rewards
    assert m["rollout/tree_groups"] == 4 and "rollout/tree_tokens_saved_per_group" in m


def test_mixed_batches_train(tmp_path):
    tr = make_trainer(tmp_path, rollouts="mcts", mcts_prob=0.5, mcts_step="tokens:2", beta=0.04)
    counts = []
    for step in range(3):
        counts.append(sum(use_tree(0, step, i, 0.5) for i in tr.step_indices(step)))
        m = tr.train_step()
        assert m["rollout/tree_groups"] == counts[-1] and torch.isfinite(torch.tensor(m["loss"]))
    assert any(0 < c < 4 for c in counts)  # some step really mixed tree groups and sampled groups


def test_token_budget_stops_training_and_survives_resume(tmp_path):
    tr = make_trainer(tmp_path, steps=50, token_budget=300, save_every=1)
    last = tr.train()
    assert tr.step < 50 and 300 <= tr.generated_total < 300 + 4 * 8 * 8  # stops after the step that crosses it
    assert last["rollout/generated_tokens_total"] == tr.generated_total
    again = make_trainer(tmp_path, steps=50, token_budget=300, save_every=1)
    assert again.resume() and again.generated_total == tr.generated_total and again.budget_spent()
    again.train()
    assert again.step == tr.step  # a spent budget stays spent: no extra step after resuming
    assert (tmp_path / "final_hf" / "config.json").is_file()


def test_max_minutes_stops_training(tmp_path):
    tr = make_trainer(tmp_path, steps=1000, max_minutes=1e-9)
    tr.train()
    assert tr.step == 1 and (tmp_path / "final_hf" / "config.json").is_file()  # one step, then final eval/export


def test_gumbel_root_trees_train(tmp_path):
    tr = make_trainer(tmp_path, rollouts="mcts", mcts_root="gumbel", mcts_step="tokens:2", mcts_children=4)
    assert tr.search_cfg.root == "gumbel"
    for _ in range(2):
        m = tr.train_step()
        assert m["rollout/tree_groups"] == 4 and torch.isfinite(torch.tensor(m["loss"]))


def test_token_budget_progress_bar_counts_tokens(tmp_path, capsys):
    """With --token-budget the run ends long before --steps: the bar counts rollout tokens up to the budget."""
    tr = make_trainer(tmp_path, steps=50, token_budget=300, save_every=100)
    tr.progress = True
    tr.train()
    err = capsys.readouterr().err
    assert "300/300" in err and "tok" in err and "/50" not in err


def test_short_groups_cycle_through_their_distinct_rollouts():
    from grpo.tree_rollout import cycle_to

    assert cycle_to(list("abc"), 8) == list("abcabcab") and cycle_to(list("ab"), 2) == list("ab")
    assert cycle_to(["x"], 3) == ["x"] * 3


def test_samples_log_the_mean_token_advantage_of_tree_rows():
    """samples.jsonl: with per-token advantages, each row's mean over its own tokens (padding excluded) is logged
    beside the group advantage; plain rollouts have no such field."""
    import dataclasses

    from data import Problem
    from grpo.metrics import sample_rows
    from grpo.rollout import Rollout

    ro = Rollout([Problem("q", "1", "", 0)], [[5]], torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3),
                 torch.tensor([[True, True, False], [True, False, False]]), ["stop", "stop"], ["a", "b"],
                 torch.tensor([[1.0, 0.0]]), {}, torch.tensor([[0.7, -0.7]]), 0,
                 token_advantages=torch.tensor([[1.0, 3.0, 9.0], [-2.0, 5.0, 5.0]]))
    rows = sample_rows(ro, 2)
    assert [r["token_advantage_mean"] for r in rows] == [2.0, -2.0]
    assert [round(r["advantage"], 3) for r in rows] == [0.7, -0.7]
    assert "token_advantage_mean" not in sample_rows(dataclasses.replace(ro, token_advantages=None), 2)[0]


class _OnGPU(torch.Tensor):
    """A CPU tensor that acts as one on another device (a GPU): an op mixing it with a plain tensor of one or more
    dimensions fails as torch's device check does; .cpu() gives the plain tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor)
        flat = [a for a in (*args, *kwargs.values()) for a in (a if isinstance(a, (list, tuple)) else [a])]
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if any(isinstance(t, cls) for t in tensors) and any(type(t) is torch.Tensor and t.dim() for t in tensors):
            raise RuntimeError("Expected all tensors to be on the same device")
        return super().__torch_function__(func, types, args, kwargs)


def test_merge_puts_a_gpu_plain_part_and_a_cpu_tree_part_together(tmp_path):
    """--rollouts mcts with 0 < --mcts-prob < 1 on a GPU: the plain part's completions, log-probs and mask come from
    the sampler on the GPU, the tree part's are built on the CPU; merge (and the trainer's batch-std shift after it,
    with CPU advantages) must not mix them."""
    tr = make_trainer(tmp_path, rollouts="mcts", max_new_tokens=4, mcts_step="tokens:2", mcts_children=4)
    idx = tr.step_indices(0)[:2]
    tree, _ = collect_tree(tr.model, tr.tok, [tr.train_set[i] for i in idx], tr.prompts(idx), idx, 4, tr.search_cfg,
                           tr.rewards, 0, 0, "mix", 0.5)
    plain = dataclasses.replace(tree, token_advantages=None, **{k: getattr(tree, k).as_subclass(_OnGPU)
                                                                 for k in ("completions", "old_logp", "mask")})
    both = merge([plain, tree], tr.tok.pad_token_id)
    for t in (both.completions, both.old_logp, both.mask, both.token_advantages):
        assert type(t) is torch.Tensor
    assert torch.equal(both.token_advantages[: len(idx) * 4], tree.advantages.flatten()[:, None] * tree.mask)
    with_batch_std(both, both.advantages + 1.0, len(idx), "mix")  # grpo/trainer.py with --adv-scale batch
    assert torch.equal(both.token_advantages[: len(idx) * 4], (tree.advantages + 1.0).flatten()[:, None] * tree.mask)


@pytest.mark.parametrize("tree_advantage", ["mix", "step", "outcome"])
def test_the_batch_std_shift_moves_outcome_advantages_only(tree_advantage):
    """--adv-scale batch with plain and tree prompts in one step: the global batch's advantages replace each part's
    own. A plain row's per-token advantage is its outcome advantage on every token: it moves by the shift. A tree
    row's moves by the same shift with --tree-advantage mix or outcome (the outcome term is in it), not with step
    (none is)."""
    from grpo.rollout import Rollout

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)  # [B*G, T] B=2, G=2
    old = torch.tensor([[1.0, -1.0], [0.5, -0.5]])  # [B, G] prompt 0 plain, prompt 1 tree
    tok = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.75, 0.25, 0.5], [-0.5, -0.25, 0.0]])  # [B*G, T]
    ro = Rollout(problems=[], prompts=[], completions=torch.zeros(4, 3, dtype=torch.long), old_logp=torch.zeros(4, 3),
                 mask=mask, finish=[], texts=[], rewards=torch.zeros(2, 2), per_fn={}, advantages=old,
                 forward_tokens=0, token_advantages=tok.clone())
    new = torch.tensor([[2.0, -2.0], [1.0, -1.0]])
    with_batch_std(ro, new, 1, tree_advantage)
    assert torch.equal(ro.advantages, new)
    tree_shift = [0.5, -0.5] if tree_advantage != "step" else [0.0, 0.0]  # outcome: the tokens hold it alone
    want = torch.tensor([[2.0, 2.0, 0.0], [-2.0, 0.0, 0.0],  # plain: the new outcome advantage on each token
                         [0.75 + tree_shift[0], 0.25 + tree_shift[0], 0.5 + tree_shift[0]],
                         [-0.5 + tree_shift[1], -0.25 + tree_shift[1], 0.0]])
    assert torch.equal(ro.token_advantages, want)
