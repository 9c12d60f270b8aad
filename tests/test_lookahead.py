"""Lookahead decoding (search only at decision points) and the seed plan's mcts_rollout interface."""
from dataclasses import replace

import pytest
import torch
from helpers import tiny_hf_model, tiny_tokenizer

from data import encode_prompts, render_prompt
from mcts.lookahead import When, lookahead_decode, mcts_rollout
from mcts.search import SearchConfig
from model_io.convert import from_hf_model


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = from_hf_model(tiny_hf_model("llama", dtype=torch.float64))
    return model, tok, encode_prompts(tok, ["What is 2+2?", "How many legs have 3 cats?"])


CFG = SearchConfig(n_simulations=2, children=2, step="tokens:3", rollout_depth=1, max_new_tokens=12)


def test_always_searches_every_step(setup):
    model, tok, prompts = setup
    res = lookahead_decode(model, tok, prompts, CFG, When.parse("always"))
    for r in res:
        assert len(r.tokens) <= 12 and r.searches == 4  # 12 tokens in steps of 3, each one searched
        assert r.generated_tokens > len(r.tokens)


def test_every_k_alternates_plain_tokens_and_searched_steps(setup):
    model, tok, prompts = setup
    res = lookahead_decode(model, tok, prompts, CFG, When.parse("every:3"))
    for r in res:
        assert r.searches == 2 and len(r.tokens) == 12  # 3 plain + 3 searched, twice


def test_fallback_one_never_searches(setup):
    model, tok, prompts = setup
    res = lookahead_decode(model, tok, prompts, CFG, When.parse("always"), fallback_p=1.0)
    assert all(r.searches == 0 and len(r.tokens) == 12 for r in res)


def test_entropy_threshold_controls_how_often_search_runs(setup):
    model, tok, prompts = setup
    never = lookahead_decode(model, tok, prompts, CFG, When.parse("entropy:100"))
    always = lookahead_decode(model, tok, prompts, CFG, When.parse("entropy:0.001"))
    assert all(r.searches == 0 for r in never) and all(r.searches >= 3 for r in always)


def test_when_parsing():
    assert When.parse("every:4") == When("every", k=4) and When.parse("entropy:1.5").h == 1.5
    for bad in ("sometimes", "every:0", "entropy:-1", "every:x"):
        with pytest.raises(ValueError, match="--mcts-when"):
            When.parse(bad)


def test_mcts_rollout_seed_interface(setup):
    model, tok, _ = setup
    calls = []

    def reward(texts):
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    text, rewards = mcts_rollout(render_prompt(tok, "What is 2+2?"), model, tok, n_simulations=3, rollout_depth=1,
                                 reward_func=reward, step="tokens:2", children=2, max_new_tokens=8)
    assert isinstance(text, str) and len(rewards) == 2 and sum(calls) == 3 * 2


@pytest.mark.parametrize("when", ["always", "every:2"])
def test_each_row_is_searched_with_its_own_room(setup, monkeypatch, when):
    """Rows searched together keep their own budgets (a row near its end must not cut the others' searches)."""
    import mcts.lookahead as la

    model, tok, prompts = setup
    seen = []
    real = la.search

    def spy(model_, tok_, rows, cfg, qids, *a, max_new_tokens=None, **k):
        # which rows: lookahead names a decision's search question_id * 100003 + decision
        seen.append((max_new_tokens, [len(r) - len(prompts[(q // 100003) % 2]) for r, q in zip(rows, qids)]))
        return real(model_, tok_, rows, cfg, qids, *a, max_new_tokens=max_new_tokens, **k)

    monkeypatch.setattr(la, "search", spy)
    # a quarter of the tiny vocabulary ends a step, so that steps (and the rows' room) differ in length
    every_fourth = torch.arange(len(tok)) % 4 == 0
    monkeypatch.setattr(la, "newline_table", lambda _: every_fourth)
    monkeypatch.setattr("mcts.search.newline_table", lambda _: every_fourth)
    cfg = SearchConfig(n_simulations=2, children=2, step="newline", step_tokens=4, rollout_depth=1, max_new_tokens=12, stop="")
    # seed 1: the rows' room must differ somewhere for the test to test anything (the last assert); with seed 0,
    # since the sampler's float64 sum, every:2's three searches happened to find all rows with the same room
    lookahead_decode(model, tok, prompts * 2, cfg, When.parse(when), question_ids=[0, 1, 2, 3], seed=1)
    for caps, done in seen:  # each row's cap is what its answer so far leaves of the 12 tokens
        assert caps == [12 - n for n in done]
    assert any(len(set(caps)) > 1 for caps, _ in seen), "steps of different lengths leave rows with different room"


@pytest.mark.parametrize("when,fallback", [("every:3", 0.0), ("always", 0.5)])
def test_a_rows_answer_does_not_depend_on_its_batch(setup, when, fallback):
    """Plain stretches and fallback steps draw from per-row keys, as the search does: a question answered beside
    another gets the answer it gets alone (so --batch-size changes no result)."""
    model, tok, prompts = setup
    cfg = SearchConfig(n_simulations=2, children=2, step="tokens:3", rollout_depth=1, max_new_tokens=12, temperature=1.0)
    both = lookahead_decode(model, tok, prompts, cfg, When.parse(when), fallback_p=fallback, question_ids=[7, 8], seed=1)
    alone = lookahead_decode(model, tok, prompts[1:], cfg, When.parse(when), fallback_p=fallback, question_ids=[8], seed=1)
    assert both[1].tokens == alone[0].tokens and both[1].generated_tokens == alone[0].generated_tokens
    assert both[0].tokens != both[1].tokens



@pytest.mark.parametrize("when", ["always", "every:2"])
def test_the_value_function_sees_the_whole_answer_so_far(setup, monkeypatch, when):
    """At a decision point the search starts from the answer committed so far; what its value function scores
    (and what answers are parsed from) must be that answer followed by the search's tokens, not the new tail alone,
    which a format check reads from its first character and where an <answer> opened earlier never closes."""
    import mcts.lookahead as la

    model, tok, prompts = setup
    real, now, seen = la.search, {}, []

    def spy(model_, tok_, rows, cfg, qids, *a, **k):
        # each searched row and its answer so far (lookahead names a search question_id * 100003 + decision)
        now["rows"] = [((q // 100003) % 2, len(r) - len(prompts[(q // 100003) % 2])) for r, q in zip(rows, qids)]
        return real(model_, tok_, rows, cfg, qids, *a, **k)

    def value(c):
        seen.extend((*now["rows"][t], list(i), text) for t, i, text in zip(c.trees, c.ids, c.texts))
        return [0.5] * len(c.texts)

    monkeypatch.setattr(la, "search", spy)
    cfg = SearchConfig(n_simulations=2, children=2, step="tokens:3", rollout_depth=1, max_new_tokens=12, stop="")
    res = lookahead_decode(model, tok, prompts, cfg, When.parse(when), value_fn=value)
    assert any(m > 0 for _, m, _, _ in seen)  # searches from a committed answer happened
    for row, m, ids, text in seen:
        assert ids[:m] == res[row].tokens[:m]  # the answer so far, in front
        assert 0 < len(ids) - m <= 3 * (cfg.n_simulations + cfg.rollout_depth)  # then the search's path and rollout
        assert text == tok.decode(ids, skip_special_tokens=True)


def test_plain_stretches_give_the_stop_check_the_answer_so_far(setup, monkeypatch):
    """Seen (a review): with --mcts-when every:13 a plain stretch ended inside "</answer>" and the next stretch,
    which saw only its own tokens, ran on to max_new_tokens past the answer. Each plain stretch now hands the
    stop check the row's committed answer (the search gets it as its answer_prefix)."""
    import mcts.lookahead as la

    model, tok, prompts = setup
    real, seen = la.generate, []

    def spy(model_, rows, cfg, keys, **k):
        seen.append(([list(r) for r in rows], [list(c) for c in k["stop_context"]]))  # (copies: the answers grow)
        return real(model_, rows, cfg, keys, **k)

    monkeypatch.setattr(la, "generate", spy)
    res = lookahead_decode(model, tok, prompts, replace(CFG, stop="</answer>"), When.parse("every:3"))
    assert len(seen) >= 2 and any(ctx for _, ctx in seen)
    for rows, ctx in seen:
        for row, c in zip(rows, ctx):
            q = next(i for i, p in enumerate(prompts) if row[: len(p)] == p)
            assert row == prompts[q] + c and c == res[q].tokens[: len(c)]  # what the row continues: its answer so far


def test_a_fallback_step_commits_one_newline_step(setup, monkeypatch):
    """A plain (fallback) step at a decision point samples up to step_tokens tokens and commits its first step only:
    through the first newline token (here a quarter of the vocabulary), as a searched step would. The answer is
    then each fallback's tokens cut there, in order."""
    import mcts.lookahead as la

    model, tok, prompts = setup
    every_fourth = torch.arange(len(tok)) % 4 == 0
    monkeypatch.setattr(la, "newline_table", lambda _: every_fourth)
    real, sampled = la.generate, []

    def spy(*a, **k):
        res = real(*a, **k)
        sampled.append(res.row(0))
        return res

    monkeypatch.setattr(la, "generate", spy)
    cfg = SearchConfig(step="newline", step_tokens=4, max_new_tokens=12, temperature=1.0, stop="")
    res = lookahead_decode(model, tok, prompts[:1], cfg, When.parse("always"), fallback_p=1.0)[0]
    cut = [next((i + 1 for i, t in enumerate(s) if every_fourth[t]), len(s)) for s in sampled]
    assert res.tokens == [t for s, n in zip(sampled, cut) for t in s[:n]] and res.searches == 0
    assert any(n < len(s) for s, n in zip(sampled, cut))  # some step ended before its sampled tokens did


def test_the_committed_step_is_the_most_visited_then_the_best_valued_child():
    """Without Gumbel's pick, a decision commits the root's most visited child; ties go to the higher mean value,
    then to the lower node id (mcts/interface.py, SearchResult.best_first_step)."""
    from mcts.interface import SearchResult

    def best(steps):
        return SearchResult("", None, 0, "length", 0, 0, 0, first_steps=[dict(node=n, visits=v, value=q) for n, v, q in steps]).best_first_step()["node"]

    assert best([(1, 4.0, 0.1), (2, 6.0, 0.0), (3, 6.0, 0.5)]) == 3  # visits 6 twice: value 0.5 > 0.0
    assert best([(1, 6.0, 0.5), (2, 6.0, 0.5), (3, 2.0, 0.9)]) == 1  # and on equal values the lower id
    assert best([(1, 2.0, 0.9), (2, 6.0, 0.1)]) == 2  # visits first
    steps = [dict(node=n, visits=v, value=q) for n, v, q in [(1, 6.0, 0.5), (2, 6.0, 0.1), (3, 2.0, 0.9)]]
    gumbel = lambda choice: SearchResult("", None, 0, "length", 0, 0, 0, first_steps=steps, root_choice=choice).best_first_step()["node"]  # noqa: E731
    assert gumbel(2) == 2 and gumbel(3) == 3  # Sequential Halving's choice, whatever the visits say
    assert gumbel(9) == 1  # (a choice among no first steps: the most visited)
