"""Tree search over reasoning steps on a tiny random model: budgets, the prompt read once, batch independence."""
import pytest
import torch
from helpers import tiny_hf_model, tiny_tokenizer

from data import encode_prompts
from mcts.search import SearchConfig, path_tokens, search, step_ends
from mcts.tree import Tree, expand
from model_io.convert import from_hf_model
from model_io.model import Transformer


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = from_hf_model(tiny_hf_model("llama", dtype=torch.float64))
    prompts = encode_prompts(tok, ["What is 2+2?", "How many legs have 3 cats?", "Add 5 and 7."])
    return model, tok, prompts


def cfg(**kw):
    base = dict(n_simulations=4, children=3, step="tokens:4", rollout_depth=2, max_new_tokens=20, temperature=1.0)
    return SearchConfig(**{**base, **kw})


def test_budgets_are_respected(setup):
    model, tok, prompts = setup
    c = cfg()
    res = search(model, tok, prompts, c, keep_trees=True)
    for r in res:
        assert r.nodes <= 1 + c.n_simulations * c.children
        assert r.generated_tokens <= c.n_simulations * c.children * c.step_len * (1 + c.rollout_depth)
        assert r.answer_tokens <= c.max_new_tokens
        steps = r.tree["nodes"][1:]
        assert all(n["tokens"] == 4 or (n["terminal"] and 1 <= n["tokens"] < 4) for n in steps)  # tokens:4 steps


def test_the_prompt_is_read_once_per_question(setup, monkeypatch):
    model, tok, prompts = setup
    seen = []
    real = Transformer.hidden

    def counting(self, tokens, *a, **k):
        seen.append(tokens.shape)
        return real(self, tokens, *a, **k)

    monkeypatch.setattr(Transformer, "hidden", counting)
    c = cfg()
    res = search(model, tok, prompts, c)
    prompt_reads = [s for s in seen if s[1] == max(map(len, prompts))]
    assert len(prompt_reads) == 1  # one prefill of the three prompts, never again
    P = sum(map(len, prompts))
    assert sum(r.forward_tokens for r in res) < P + c.n_simulations * c.children * P  # not re-read per child
    assert [r.forward_tokens for r in res][0] >= len(prompts[0]) + res[0].generated_tokens


def test_searching_together_equals_searching_alone(setup):
    model, tok, prompts = setup
    c = cfg(step="newline", step_tokens=5)
    together = search(model, tok, prompts, c, question_ids=[10, 11, 12], keep_trees=True)
    for i, p in enumerate(prompts):
        alone = search(model, tok, [p], c, question_ids=[10 + i], keep_trees=True)[0]
        assert alone.tree == together[i].tree and alone.text == together[i].text


def most_visited_path(r, start=0):
    """The nodes from `start`'s child down to a leaf, always the most visited child (ties: the lower id), read from
    the dump (keep_trees=True): the path an answer="visits" search answers with (mcts/search.py `_result`)."""
    nodes, path, node = r.tree["nodes"], [], start
    while kids := [n["id"] for n in nodes if n["parent"] == node and n["id"] != 0]:
        node = max(kids, key=lambda k: (nodes[k]["visits"], -k))
        path.append(node)
    return path


def visits_answer(r, start=0):
    """The answer text a visits search gives: the own rollout (the first record created at it) of the node that the
    most visited path from `start` ends on."""
    path = most_visited_path(r, start)
    end = path[-1] if path else start
    return next((rec.text for rec in r.records if rec.node == end), r.records[0].text)


@pytest.mark.parametrize("mode", ["vote", "value", "visits"])
def test_answer_modes(setup, mode):
    """answer="visits": the text is the rollout of the node reached by the most visited child at every level
    (a min for the max, or another node's rollout, gives other text for some of these trees)."""
    model, tok, prompts = setup
    res = search(model, tok, prompts[:1], cfg(answer=mode, max_new_tokens=12))
    assert isinstance(res[0].text, str) and res[0].nodes > 1
    if mode == "visits":
        res = search(model, tok, prompts, cfg(answer=mode, max_new_tokens=12, n_simulations=6), question_ids=[0, 1, 2],
                     keep_trees=True)
        for r in res:
            assert r.text == visits_answer(r) and r.root_choice is None


def test_step_ends_at_first_newline_or_cap():
    nl = torch.zeros(10, dtype=torch.bool)
    nl[7] = True
    toks = torch.tensor([[1, 2, 7, 3, 4, 5], [1, 2, 3, 4, 5, 6], [7, 1, 1, 1, 1, 1]])
    lengths = torch.tensor([6, 6, 6])
    c = SearchConfig(step="newline", step_tokens=4)
    assert step_ends(toks, lengths, c, nl).tolist() == [3, 4, 1]
    assert step_ends(toks, torch.tensor([2, 6, 6]), c, nl).tolist() == [2, 4, 1]
    assert step_ends(toks, lengths, SearchConfig(step="tokens:2"), nl).tolist() == [2, 2, 2]


def test_path_tokens_are_right_aligned_root_first():
    t = Tree.empty(2, 10, 2)
    kids = expand(t, torch.tensor([0, 0]), torch.full((2, 2), 0.5))
    grand = expand(t, kids[:, 0], torch.full((2, 2), 0.5))
    steps = torch.zeros(2, 10, 3, dtype=torch.long)
    lens = torch.zeros(2, 10, dtype=torch.long)
    steps[0, 1], lens[0, 1] = torch.tensor([11, 12, 0]), 2
    steps[0, 3], lens[0, 3] = torch.tensor([13, 14, 15]), 3
    steps[1, 1], lens[1, 1] = torch.tensor([21, 0, 0]), 1
    ids, mask = path_tokens(t, steps, lens, torch.tensor([0, 1]), torch.tensor([int(grand[0, 0]), 1]))
    assert [r[m].tolist() for r, m in zip(ids, mask)] == [[11, 12, 13, 14, 15], [21]]
    assert mask[1].tolist() == [False] * 5 + [True]  # left padding


def test_bad_search_settings():
    for bad, says in ((dict(answer="best"), "unknown --mcts-answer 'best'"), (dict(step="words:3"), "unknown --step 'words:3'"),
                      (dict(step="tokens:0"), "unknown --step 'tokens:0'"), (dict(n_simulations=0), "n_simulations, children"),
                      (dict(step="newlines"), "unknown --step 'newlines'"), (dict(children=0), "n_simulations, children"),
                      (dict(step_tokens=0), "n_simulations, children"), (dict(rollout_depth=-1), "n_simulations, children"),
                      (dict(c_puct=-0.5), r"c_puct must be finite and >= 0 \(got -0.5\)"), (dict(format_weight=1.5), r"format_weight in \[0, 1\] \(got 1.5\)"),
                      (dict(gumbel_c_scale=-0.1), r"gumbel_c_visit and gumbel_c_scale must be finite and >= 0 \(got 50.0, -0.1\)"),
                      (dict(gumbel_c_visit=float("nan")), "gumbel_c_visit and gumbel_c_scale must be finite"),
                      # NaN passed every `< 0` check: the search returned 1-token answers, silently (an API review)
                      (dict(temperature=float("nan")), r"temperature must be finite and >= 0 \(got nan\)"),
                      (dict(top_p=float("nan")), r"top_p in \(0, 1\] \(got nan\)"),
                      (dict(c_puct=float("nan")), r"c_puct must be finite and >= 0 \(got nan\)")):
        with pytest.raises(ValueError, match=says):
            SearchConfig(**bad)


def test_records_carry_ids_logprobs_and_node_paths(setup):
    from model_io import token_logprobs

    model, tok, prompts = setup
    c = cfg(step="tokens:3", rollout_depth=1, max_new_tokens=12)
    res = search(model, tok, prompts[:1], c)[0]
    for rec in res.records:
        assert len(rec.ids) == len(rec.logprobs) == rec.tokens
        assert rec.path[-1] == rec.node and all(res.parent[a] == b for a, b in zip(rec.path[1:], rec.path))
        assert res.parent[rec.path[0]] == 0
        own = sum(res.step_len[n] for n in rec.path)
        assert own <= rec.tokens  # the nodes' steps, then the rollout's tail
        lp = token_logprobs(model, torch.tensor([prompts[0] + rec.ids]))[0, len(prompts[0]) - 1 :]
        assert torch.allclose(lp, torch.tensor(rec.logprobs), atol=1e-5)  # the sampler's log-probs, path included


def test_gumbel_search_spreads_root_simulations_by_the_schedule(setup):
    model, tok, prompts = setup
    res = search(model, tok, prompts, cfg(root="gumbel", n_simulations=6), question_ids=[0, 1, 2], keep_trees=True)
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
    c = cfg(root="gumbel", n_simulations=6, step="newline", step_tokens=5)
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
        res = search(model, tok, prompts[:2], cfg(root="gumbel", answer=mode, n_simulations=n, max_new_tokens=12))
        assert all(isinstance(r.text, str) and r.nodes > 1 for r in res)
    if mode == "visits":  # the path starts at Gumbel's final pick at the root, then follows the most visited child
        picks = []
        for n in (1, 4, 6):
            res = search(model, tok, prompts, cfg(root="gumbel", answer=mode, n_simulations=n, max_new_tokens=12),
                         question_ids=[0, 1, 2], keep_trees=True)
            for r in res:
                assert r.root_choice is not None and r.tree["nodes"][r.root_choice]["parent"] == 0
                assert r.text == visits_answer(r, r.root_choice)
                picks.append(r.root_choice != most_visited_path(r)[0])
        assert any(picks)  # some pick is not the most visited root child: starting at the root would answer otherwise


def test_bad_root_rule():
    with pytest.raises(ValueError, match="unknown --mcts-root .ucb."):
        SearchConfig(root="ucb")


def test_identical_sibling_steps_are_one_child(setup):
    """Greedy continuations are all the same: the K copies of a step become one child holding the whole prior,
    and all K rollouts are backed up through it (visits K), each still recorded."""
    model, tok, prompts = setup
    res = search(model, tok, prompts[:2], cfg(temperature=0.0, n_simulations=1, children=3), keep_trees=True)
    for r in res:
        nodes = r.tree["nodes"]
        assert len(nodes) == 2 and r.nodes == 2
        assert nodes[1]["visits"] == 3 and nodes[1]["prior"] == pytest.approx(1.0)
        assert len(r.records) == 3 and {rec.node for rec in r.records} == {1}
    sampled = search(model, tok, prompts, cfg(n_simulations=3, children=4), keep_trees=True)
    for r in sampled:  # no two siblings hold the same step (same text and length)
        kids = [(n["parent"], n["text"], n["tokens"]) for n in r.tree["nodes"][1:]]
        assert len(set(kids)) == len(kids)


def test_child_priors_are_the_softmax_of_their_steps_mean_log_probs(setup):
    """mcts/search.py step 2: a new child's prior is the softmax over its K siblings of its step's mean token
    log-prob (length-normalised), twins summed. One simulation of K = 4 from the root: continuation i's step is the
    first step_len[node] of its record's log-probs (no path yet), m_i = their mean, prior(node) = sum over the
    continuations through node of softmax(m)_i. Newline steps (a quarter of the vocabulary ends one) give steps of
    different lengths, where the mean and the sum would order the children differently."""
    import mcts.search as ms

    model, tok, prompts = setup
    every_fourth = torch.arange(len(tok)) % 4 == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ms, "newline_table", lambda _: every_fourth)
        res = search(model, tok, prompts, cfg(n_simulations=1, children=4, step="newline", step_tokens=6), keep_trees=True)
    lengths = set()
    for r in res:
        assert len(r.records) == 4
        m = torch.tensor([sum(x.logprobs[: r.step_len[x.node]]) / r.step_len[x.node] for x in r.records], dtype=torch.float64)
        w = m.softmax(0)
        for node in {x.node for x in r.records}:
            want = sum(float(w[i]) for i, x in enumerate(r.records) if x.node == node)
            assert r.tree["nodes"][node]["prior"] == pytest.approx(want, rel=1e-4)
        lengths |= {r.step_len[x.node] for x in r.records}
    assert len(lengths) > 1  # steps of different lengths: the normalisation matters


def test_siblings_with_one_newline_step_are_one_child_whatever_follows(setup):
    """Twins are judged on the step only (its first step_len tokens), not on the continuation after it: with every
    token ending a step, a step is one token, and siblings that sampled the same first token are one child even
    though their rollouts differ. Every rollout is recorded through the child its step became."""
    import mcts.search as ms

    model, tok, prompts = setup
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ms, "newline_table", lambda _: torch.ones(len(tok), dtype=torch.bool))
        res = search(model, tok, prompts, cfg(n_simulations=2, children=8, step="newline", step_tokens=4), keep_trees=True)
    merged = 0
    for r in res:
        steps = {s["node"]: s["tokens"] for s in r.first_steps}  # the root's children's steps (token ids)
        assert all(len(t) == 1 for t in steps.values()) and len(set(map(tuple, steps.values()))) == len(steps)
        assert all(x.ids[:1] == steps[x.path[0]] for x in r.records)  # each rollout went through its own step's child
        merged += sum(len(x.path) == 1 for x in r.records) - len(steps)  # the first simulation's K rollouts
    assert merged > 0  # some siblings did share their step


@pytest.mark.parametrize("root", ["puct", "gumbel"])
def test_every_simulation_backs_up_k_values(setup, root):
    """An expansion backs up K values (one per continuation); a simulation that ends on a finished leaf (here: no
    room left after 2 steps of 2 tokens) backs its value up K times too, so the root's visits are exactly
    simulations x K. Counted once, finished children would keep PUCT's exploration bonus K times longer."""
    model, tok, prompts = setup
    c = cfg(n_simulations=12, children=3, step="tokens:2", max_new_tokens=4, rollout_depth=1, root=root)
    res = search(model, tok, prompts, c, keep_trees=True)
    for r in res:
        assert any(n["terminal"] for n in r.tree["nodes"][1:])  # revisits did happen
        assert r.tree["nodes"][0]["visits"] == 12 * 3


def test_each_prompt_keeps_its_own_answer_budget(setup):
    model, tok, prompts = setup
    c = cfg(n_simulations=6, step="tokens:2", max_new_tokens=12, stop="")
    res = search(model, tok, prompts, c, max_new_tokens=[2, 12, 6])
    assert [all(len(rec.ids) <= cap for rec in r.records) for r, cap in zip(res, [2, 12, 6])] == [True] * 3
    assert max(len(rec.ids) for rec in res[1].records) > 6  # the short row did not cut the long one


def test_generated_tokens_count_every_sampled_token(setup, monkeypatch):
    """Every token the decodes sample is counted in the results' generated tokens, with questions of different
    answer budgets decoded together. Seen when rows ran to the longest row's room (before decode took per-row caps):
    with caps [2, 12, 6] the results reported 174 generated tokens while the decodes sampled 233; rows now stop at
    their own room, and the counts must still agree."""
    import mcts.search as ms

    model, tok, prompts = setup
    sampled, real = [], ms.decode

    def spy(*a, **k):
        res = real(*a, **k)
        sampled.append(int(res.lengths.sum()))
        return res

    monkeypatch.setattr(ms, "decode", spy)
    c = cfg(n_simulations=6, step="tokens:2", max_new_tokens=12, stop="")
    res = search(model, tok, prompts, c, max_new_tokens=[2, 12, 6])
    assert sum(r.generated_tokens for r in res) == sum(sampled)
    assert max(len(rec.ids) for rec in res[0].records) <= 2  # the trees themselves still keep each row's room


def test_an_answer_ended_by_eos_reports_eos(setup, monkeypatch):
    """Seen: an eval --search mcts answer that ended at <|im_end|> (no '</answer>' in its text) was written to
    predictions.jsonl with finish 'stop'. Here half the vocabulary ends an answer and there is no stop string."""
    model, tok, prompts = setup
    monkeypatch.setattr("mcts.search.stop_token_ids", lambda *_: list(range(0, len(tok), 2)))
    res = search(model, tok, prompts, cfg(stop=""))
    assert {r.finish for r in res} == {"eos"}

def test_gumbel_root_choice_is_committed(setup):
    model, tok, prompts = setup
    res = search(model, tok, prompts, cfg(root="gumbel", n_simulations=6))
    for r in res:
        kids = [s["node"] for s in r.first_steps]
        assert r.root_choice in kids and r.best_first_step()["node"] == r.root_choice
    puct = search(model, tok, prompts, cfg(n_simulations=6))
    for r in puct:  # PUCT: the most visited root child
        assert r.root_choice is None and r.best_first_step()["visits"] == max(s["visits"] for s in r.first_steps)


def test_readme_spelling_mcts_search_search_works_in_a_fresh_interpreter():
    """README: `mcts.search.search(...)` for batched search. `mcts.search` was a lazy attribute giving the function
    on first access (AttributeError on `.search`) and the module once imported, so it depended on import order."""
    import os
    import subprocess
    import sys

    code = ("import mcts, inspect; assert inspect.ismodule(mcts.search), mcts.search; assert callable(mcts.search.search)\n"
            "from mcts import search as s; assert inspect.ismodule(s)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def pool_size_value(monkeypatch, tok, eos_bias: float, answers: int):
    """Rollouts made to finish (EOS's logit raised by `eos_bias`), each parsed to one of `answers` answers (its
    text's length mod `answers`), and a value function that scores each by the size of its tree's pool, keeping
    what it was called with: -> (calls, value_fn)."""
    import mcts.search as S

    real = Transformer.logits

    def eos_likely(self, h):
        out = real(self, h).clone()
        out[..., tok.eos_token_id] += eos_bias
        return out

    monkeypatch.setattr(Transformer, "logits", eos_likely)
    monkeypatch.setattr(S, "parse_answer", lambda text: str(len(text) % answers))
    calls = []

    def value(c):
        calls.append(c)
        return [float(len(p)) for p in c.pools]

    return calls, value


@pytest.mark.parametrize("mode", ["vote", "value"])
def test_the_final_answer_is_scored_against_the_whole_tree(setup, monkeypatch, mode):
    """The value function sees every finished rollout once more at the end, each with its tree's whole pool, and
    the answer follows those values. Here value = pool size: at creation later rollouts score higher, at the end
    all tie, so the first finished rollout of the winning answer is chosen (the old choice was a late one)."""
    model, tok, prompts = setup
    calls, value = pool_size_value(monkeypatch, tok, eos_bias=2.5, answers=2)
    res = search(model, tok, prompts, cfg(answer=mode, n_simulations=5, max_new_tokens=30), value_fn=value)
    final = calls[-1]
    assert all(final.finished)
    # in some tree, rollouts of different simulations saw pools of different sizes (the old choice differed)
    assert any(len({x.value for x in r.records if x.finished}) > 1 for r in res)
    for b, r in enumerate(res):
        fin = [x for x in r.records if x.finished and x.answer is not None]
        rows = [i for i, t in enumerate(final.trees) if t == b]
        assert [final.texts[i] for i in rows] == [x.text for x in fin]
        assert all(sorted(final.pools[i]) == sorted(x.answer for x in fin) for i in rows)
        if mode == "value":
            assert r.text == fin[0].text
        else:
            top = max({x.answer for x in fin}, key=lambda a: ([x.answer for x in fin].count(a), -[x.answer for x in fin].index(a)))
            assert r.text == next(x.text for x in fin if x.answer == top)


@pytest.mark.parametrize("root,answer", [("puct", "vote"), ("gumbel", "visits")])
def test_rescoring_leaves_a_search_with_fixed_values_as_it_was(setup, root, answer):
    """A value that does not depend on the pool: rebuilding the tree's values changes nothing (same rollouts,
    same statistics, same answer), revisits of finished leaves included."""
    model, tok, prompts = setup

    def value(c):
        return [(len(t) % 7) / 7 for t in c.texts]

    kw = dict(n_simulations=8, children=3, step="tokens:2", max_new_tokens=6, rollout_depth=1, root=root, answer=answer)
    plain = search(model, tok, prompts, cfg(**kw), value_fn=value, keep_trees=True)
    again = search(model, tok, prompts, cfg(rescore=True, **kw), value_fn=value, keep_trees=True)
    assert any(n["terminal"] for r in plain for n in r.tree["nodes"][1:])  # finished leaves, some revisited
    for p, a in zip(plain, again):
        assert [x.text for x in p.records] == [x.text for x in a.records] and p.text == a.text
        for x, y in zip(p.tree["nodes"], a.tree["nodes"]):
            assert x["visits"] == y["visits"] and x["value"] == pytest.approx(y["value"], abs=1e-6)


@pytest.mark.parametrize("rescore", [False, True])
def test_rescoring_scores_every_rollout_against_the_answers_found_so_far(setup, monkeypatch, rescore):
    """value = size of the pool, rollouts made to finish (EOS made likely): at creation later rollouts score
    higher, so the tree's values differ from node to node. Rescored, every finished rollout holds the final
    pool's size, so in a tree whose rollouts all finished every visited node's mean value is that size; before
    each simulation after the first, and once at the end, the value function saw every finished rollout."""
    model, tok, prompts = setup
    calls, value = pool_size_value(monkeypatch, tok, eos_bias=3.0, answers=3)
    c = cfg(rescore=rescore, n_simulations=5, step="tokens:2", rollout_depth=40, max_new_tokens=80)  # rollouts run to EOS
    res = search(model, tok, prompts, c, value_fn=value, keep_trees=True)
    whole = [r for r in res if all(x.finished for x in r.records)]
    assert whole and all(len({x.value for x in r.records}) > 1 for r in whole)  # creation values differ
    for r in whole:
        means = {round(n["value"], 5) for n in r.tree["nodes"] if n["visits"] > 0}
        assert (means == {float(len(r.records))}) == rescore
    # one call per simulation for its new rollouts and one at the end (the final answer's values, and rescored the
    # tree's); rescored, one more before each simulation after the first, each with every finished rollout so far
    assert len(calls) == 5 + 1 + rescore * 4
    if rescore:
        made = [len(k.texts) for k in calls[0:10:2]]  # creation calls alternate with rescoring from the second on
        assert [len(k.texts) for k in calls[1:11:2]] == [sum(made[: i + 1]) for i in range(5)]


@pytest.mark.parametrize("static", [False, True])
def test_a_stop_string_across_a_step_boundary_ends_the_rollout(setup, monkeypatch, static):
    """Seen (a review): with --step tokens:N a step may end inside "</answer>"; the node's children were decoded
    in a call that saw only their own tokens, so they never stopped: rollouts ran on past the answer (unfinished,
    no answer, trained on by tree GRPO) and the tree grew beyond it. Here the stop is three tokens that the first
    two-token step splits; every rollout that holds it must end where it completes."""
    import mcts.search as ms
    from model_io.sampler import decode_mode

    model, tok, prompts = setup
    c = cfg(n_simulations=3, children=1, step="tokens:2", rollout_depth=8, max_new_tokens=16, temperature=0.0, stop="")
    with decode_mode("static" if static else "dynamic"):
        g = search(model, tok, prompts[:1], c)[0].records[0].ids  # the greedy answer
        seq = g[1:4]  # token 1 ends the first step, tokens 2-3 begin the second

        class Stop:
            window = 4

            def __init__(self, *_):
                pass

            def __call__(self, tails):
                return [any(t[i : i + 3] == seq for i in range(len(t) - 2)) for t in tails]

        monkeypatch.setattr(ms, "StopOnText", Stop)
        res = search(model, tok, prompts[:1], cfg(n_simulations=3, children=1, step="tokens:2", rollout_depth=8,
                                                   max_new_tokens=16, temperature=0.0, stop="x"), keep_trees=True)[0]
    # the root's child (its rollout saw the stop whole), then that child's child, which completes the stop and is
    # a finished leaf (the third simulation revisits it); before, that one ran on and the tree grew past the answer
    assert len(res.records) == 2 and res.nodes == 3
    for rec in res.records:
        assert rec.ids[:4] == g[:4] and rec.ids[1:4] == seq
        assert rec.finished and len(rec.ids) == 4, (rec.ids, rec.finished)  # ended where the stop completes
    assert res.finish == "stop"
