"""The KV-cached sampler: identity with transformers' greedy generate, log-probs, seeds, forking, stops."""
import pytest
import torch
from helpers import left_pad, random_prompts, tiny_hf_model

from model_io import SamplingConfig, generate, prefill, token_logprobs
from model_io.convert import from_hf_model
from model_io.row_keys import RowKeys
from model_io.sampler import decode

GREEDY = dict(temperature=0.0)


def hf_greedy(hf, prompts, max_new, eos):
    ids, mask = left_pad(prompts, pad=256)
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                      eos_token_id=eos, pad_token_id=256)
    rows = []
    for r in out[:, ids.shape[1]:].tolist():
        rows.append(r[: r.index(eos) + 1] if eos in r else r)
    return rows


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("per_row", [True, False])
def test_greedy_is_token_identical_to_transformers_generate(arch, per_row):
    hf = tiny_hf_model(arch, dtype=torch.float64)
    ours = from_hf_model(hf)
    prompts = random_prompts([4, 9, 1, 6])
    # an EOS that row 0 emits at step 6 makes rows end at different times (row dropping, compaction)
    free = hf_greedy(hf, prompts, 24, eos=-1)
    eos = next(t for t in free[0][5:] if t not in free[0][:5])
    expected = hf_greedy(hf, prompts, 24, eos)
    pre = prefill(ours, prompts, room=24, pad_id=256, per_row=per_row)
    res = decode(ours, pre, SamplingConfig(max_new_tokens=24, eos_ids=(eos,), **GREEDY), pad_id=256)
    assert [res.row(i) for i in range(4)] == expected
    assert any(f == "eos" for f in res.finish)
    for i, r in enumerate(expected):
        assert int(res.lengths[i]) == len(r)
        assert res.finish[i] == ("eos" if r[-1] == eos else "length")
        assert (res.tokens[i, len(r):] == 256).all() and (res.logprobs[i, len(r):] == 0).all()


def test_sampled_logprobs_equal_a_full_forward_recomputation():
    """Checks the cache, positions and compaction: the sampler's log-probs are what the model gives the tokens."""
    ours = from_hf_model(tiny_hf_model("llama", dtype=torch.float64, vocab=24, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([3, 8, 5, 2, 7, 4], vocab=24, seed=1)
    gen = torch.Generator().manual_seed(0)
    res = generate(ours, prompts, SamplingConfig(max_new_tokens=30, temperature=1.0, eos_ids=(3,)), gen, n=2)
    assert sum(f == "eos" for f in res.finish) >= 4  # several rows ended early and were dropped
    for r in range(res.tokens.shape[0]):
        p, c = prompts[r // 2], res.row(r)
        lp = token_logprobs(ours, torch.tensor([p + c]))[0, len(p) - 1:]
        assert torch.allclose(lp, res.logprobs[r, : len(c)], atol=1e-5)


def test_seed_reproduces_and_differs():
    ours = from_hf_model(tiny_hf_model())
    prompts = random_prompts([5, 3])
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0)
    run = lambda s: generate(ours, prompts, cfg, torch.Generator().manual_seed(s), n=3).tokens  # noqa: E731
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_top_k_1_and_tiny_top_p_are_greedy():
    ours = from_hf_model(tiny_hf_model("qwen2"))
    prompts = random_prompts([5, 3, 7])
    greedy = generate(ours, prompts, SamplingConfig(max_new_tokens=10, **GREEDY)).tokens
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(ours, prompts, SamplingConfig(max_new_tokens=10, top_k=1), g).tokens, greedy)
    assert torch.equal(generate(ours, prompts, SamplingConfig(max_new_tokens=10, top_p=1e-6), g).tokens, greedy)


def test_top_k_keeps_samples_among_the_k_most_likely():
    ours = from_hf_model(tiny_hf_model())
    prompt = random_prompts([6])
    pre = prefill(ours, prompt, room=1)
    allowed = set(pre.logits[0].topk(3).indices.tolist())
    g = torch.Generator().manual_seed(0)
    firsts = {generate(ours, prompt, SamplingConfig(max_new_tokens=1, top_k=3, temperature=5.0), g).tokens[0, 0].item() for _ in range(40)}
    assert firsts <= allowed and len(firsts) > 1


def test_fork_continues_a_prefix_without_rerunning_it():
    ours = from_hf_model(tiny_hf_model())
    prompts = random_prompts([5, 8])
    cfg = SamplingConfig(max_new_tokens=9, **GREEDY)
    pre = prefill(ours, prompts, room=9)
    forked = pre.fork(torch.tensor([1, 0, 1]))
    a = decode(ours, forked, cfg)
    b = generate(ours, [prompts[1], prompts[0], prompts[1]], cfg)
    assert torch.equal(a.tokens, b.tokens)
    assert a.forward_tokens == 3 * 8  # decode steps only: the prompts were not run again
    again = decode(ours, pre.fork(torch.tensor([0])), cfg)  # the prefix itself was left untouched
    assert torch.equal(again.tokens[0], b.tokens[1])


def test_n_groups_rows_by_prompt():
    ours = from_hf_model(tiny_hf_model())
    prompts = random_prompts([5, 8])
    res = generate(ours, prompts, SamplingConfig(max_new_tokens=6, **GREEDY), n=3)
    assert res.tokens.shape == (6, 6)
    assert torch.equal(res.tokens[0], res.tokens[2]) and torch.equal(res.tokens[3], res.tokens[5])
    assert res.forward_tokens == 13 + 6 * 5


class StopAt:
    window = 2

    def __init__(self, token):
        self.token = token
        self.seen = []

    def __call__(self, tails):
        self.seen.append(max(map(len, tails)))
        return [self.token in t for t in tails]


def test_stop_criterion_ends_rows_and_sees_only_its_window():
    ours = from_hf_model(tiny_hf_model())
    prompts = random_prompts([5, 8, 3])
    free = generate(ours, prompts, SamplingConfig(max_new_tokens=12, **GREEDY))
    target = free.row(1)[4]
    stop = StopAt(target)
    res = generate(ours, prompts, SamplingConfig(max_new_tokens=12, **GREEDY), stop=stop)
    for r in range(3):
        row = free.row(r)
        if target in row:
            cut = row.index(target) + 1
            assert res.row(r) == row[:cut] and res.finish[r] == "stop"
        else:
            assert res.row(r) == row and res.finish[r] == "length"
    assert max(stop.seen) <= 2


class StopAtSequence:
    """A stop criterion on token ids: a tail that holds `seq` (in order, adjacent) is finished."""

    def __init__(self, seq):
        self.seq, self.window = list(seq), len(seq) + 1

    def __call__(self, tails):
        n = len(self.seq)
        return [any(t[i : i + n] == self.seq for i in range(len(t) - n + 1)) for t in tails]


@pytest.mark.parametrize("static", [False, True])
def test_a_stop_string_begun_in_the_context_ends_the_row_that_completes_it(static):
    """Seen (a review): tree search decodes each node's continuation in its own call, and a node's step may end
    inside "</answer>" ('</' | 'answer>'): the next call saw only its own tokens, never the string whole, and
    the rollout ran on past the answer (unfinished, no answer, trained on). decode's stop_context gives the stop
    check what the row continues; a stop held whole by the context alone does not end the row."""
    ours = from_hf_model(tiny_hf_model())
    prompts = random_prompts([5, 7])
    free = generate(ours, prompts, SamplingConfig(max_new_tokens=10, **GREEDY), static=static)
    g = [free.row(r) for r in range(2)]  # [2][10] greedy continuations
    stop = StopAtSequence(g[0][3:6])  # three tokens: the call resumes after the first two of them
    resumed = [p + row[:5] for p, row in zip(prompts, g)]
    cfg = SamplingConfig(max_new_tokens=5, **GREEDY)
    blind = generate(ours, resumed, cfg, stop=stop, static=static)
    assert blind.finish[0] == "length" and blind.row(0) == g[0][5:10]  # (the old behaviour: it ran on)
    seen = generate(ours, resumed, cfg, stop=stop, static=static, stop_context=[row[:5] for row in g])
    assert seen.row(0) == [g[0][5]] and seen.finish[0] == "stop"  # ended by the token that completes it
    assert seen.row(1) == blind.row(1) and seen.finish[1] == blind.finish[1]  # (not row 1's context: no match)
    # a context that holds the stop whole ended before this call: it ends nothing here
    whole = [p + row[:6] for p, row in zip(prompts, g)]
    after = generate(ours, whole, cfg, stop=stop, static=static, stop_context=[row[:6] for row in g])
    assert after.row(0) == generate(ours, whole, cfg, static=static).row(0) and after.finish[0] == "length"
    with pytest.raises(ValueError, match="stop_context has 1 rows, the batch 2"):
        generate(ours, resumed, cfg, stop=stop, static=static, stop_context=[[1]], n=1)
    # n rows per prompt: each row gets its own prompt's context (rows 0, 1: prompt 0's; rows 2, 3: prompt 1's)
    two = generate(ours, resumed, cfg, stop=stop, static=static, stop_context=[row[:5] for row in g], n=2)
    assert [two.row(r) for r in range(4)] == [seen.row(0)] * 2 + [seen.row(1)] * 2
    assert two.finish == [seen.finish[0]] * 2 + [seen.finish[1]] * 2


def test_stop_heads_and_with_heads_by_hand():
    """stop_heads keeps each row's last window - 1 context tokens (none where the context already holds the stop
    whole); with_heads leads each live row's tail with its own row's head, trimmed so that head + tail is at most
    `window` long. Window 4, stop [7, 8, 9]: contexts [1..5], [7, 8, 9], [30..33] -> heads [3, 4, 5], [] (held
    whole), [31, 32, 33]. Rows 0 and 2 live (row 1 finished, so cached row 1 is result row 2): tails [6] and
    [10, 11] -> [3, 4, 5, 6] and [32, 33, 10, 11]; a tail of `window` tokens takes no head."""
    from model_io.stop_check import stop_heads, with_heads

    stop = StopAtSequence([7, 8, 9])
    heads = stop_heads(stop, [[1, 2, 3, 4, 5], [7, 8, 9], [30, 31, 32, 33]], 3)
    assert heads == [[3, 4, 5], [], [31, 32, 33]]
    assert with_heads([[6], [10, 11]], [0, 2], heads, stop.window) == [[3, 4, 5, 6], [32, 33, 10, 11]]
    assert with_heads([[6, 7, 8, 9]], [2], heads, stop.window) == [[6, 7, 8, 9]]
    assert stop_heads(None, [[1]], 1) is None and with_heads([[6]], [0], None, 4) == [[6]]


def test_max_new_tokens_and_config_validation():
    ours = from_hf_model(tiny_hf_model())
    res = generate(ours, random_prompts([4]), SamplingConfig(max_new_tokens=5, **GREEDY))
    assert res.tokens.shape == (1, 5) and res.finish == ["length"] and int(res.lengths[0]) == 5
    for bad, says in ((dict(max_new_tokens=0), "max_new_tokens must be >= 1"), (dict(temperature=-1.0), "temperature must be finite and >= 0, got -1.0"),
                      (dict(top_p=0.0), r"top_p must be in \(0, 1\]"), (dict(top_k=-1), "top_k must be >= 0"),
                      # NaN passed `< 0` and sampled the last id of every row, with finite log-probs (an API review)
                      (dict(temperature=float("nan")), "temperature must be finite"), (dict(temperature=float("inf")), "finite")):
        with pytest.raises(ValueError, match=says):
            SamplingConfig(**bad)
    for n in (0, -1, 1.0, True):  # 0 and -1 gave one row per prompt
        with pytest.raises(ValueError, match=rf"n \(completions per prompt\) must be an integer >= 1, got {n!r}"):
            generate(ours, random_prompts([4]), SamplingConfig(max_new_tokens=5, **GREEDY), n=n)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(ours, [[1, 2], []], SamplingConfig(max_new_tokens=2))
    V = ours.cfg.vocab_size  # ids past the embedding: an IndexError from F.embedding (a device assert on a GPU)
    for bad, got in (([[1, V]], V), ([[-1, 2]], -1)):
        with pytest.raises(ValueError, match=rf"^prompt token ids must be in \[0, {V}\), the model's vocabulary; got {got}$"):
            generate(ours, bad, SamplingConfig(max_new_tokens=2))


def test_running_past_the_trained_positions_warns_once_naming_the_fix(monkeypatch, capsys):
    import model_io.sampler

    monkeypatch.setattr(model_io.sampler, "_warned_positions", [])
    ours = from_hf_model(tiny_hf_model(max_position_embeddings=512))
    capsys.readouterr()
    generate(ours, random_prompts([500]), SamplingConfig(max_new_tokens=12, **GREEDY))  # 512: the last fits
    assert capsys.readouterr().err == ""
    for _ in range(2):
        generate(ours, random_prompts([500]), SamplingConfig(max_new_tokens=13, **GREEDY))
    assert capsys.readouterr().err == ("warning: prompt + new tokens run past the model's max_position_embeddings (512), "
                                       "where its outputs degrade: use fewer --shots or a smaller --max-new-tokens\n")


def test_per_row_generators_make_rows_independent_of_their_batch():
    ours = from_hf_model(tiny_hf_model(vocab=24, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 8, 3, 6], vocab=24)
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, eos_ids=(3,))
    gens = lambda ids: [torch.Generator().manual_seed(1000 + i) for i in ids]  # noqa: E731
    together = generate(ours, prompts, cfg, gens(range(4)))
    for part in ([0, 2], [1, 3]):
        alone = generate(ours, [prompts[i] for i in part], cfg, gens(part))
        for j, i in enumerate(part):
            assert alone.row(j) == together.row(i)


def test_extend_continues_like_a_longer_prompt():
    from model_io import extend

    ours = from_hf_model(tiny_hf_model(dtype=torch.float64))
    prompts = random_prompts([5, 8, 3])
    paths = [[7, 8, 9], [], [10]]  # right-aligned, row 1 reads nothing new
    L = 3
    toks = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.bool)
    for i, p in enumerate(paths):
        if p:
            toks[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), True
    cfg = SamplingConfig(max_new_tokens=6, **GREEDY)
    root = prefill(ours, prompts, room=L + 6)
    assert root.forward_tokens == 5 + 8 + 3  # the prompts' tokens, not their padding
    pre = extend(ours, root, toks, mask)
    assert pre.forward_tokens == 4
    got = decode(ours, pre, cfg)
    want = generate(ours, [p + q for p, q in zip(prompts, paths)], cfg)
    assert torch.equal(got.tokens, want.tokens)


def test_max_entropy_ends_rows_before_an_uncertain_token():
    ours = from_hf_model(tiny_hf_model(dtype=torch.float64))
    prompts = random_prompts([5, 8])
    free = generate(ours, prompts, SamplingConfig(max_new_tokens=8, **GREEDY))
    # entropy of each position's next-token distribution, from a full forward
    ent = []
    for r, p in enumerate(prompts):
        with torch.no_grad():
            logits = ours(torch.tensor([p + free.row(r)]))[0, len(p) - 1 :].double()
        lsm = logits.log_softmax(-1)
        ent.append(-(lsm.exp() * lsm).sum(-1)[:8])
    h = float(torch.stack(ent).median())
    res = generate(ours, prompts, SamplingConfig(max_new_tokens=8, max_entropy=h, **GREEDY))
    for r in range(2):
        cut = next((t for t in range(8) if ent[r][t] > h), 8)
        assert res.row(r) == free.row(r)[:cut]
        assert res.finish[r] == ("unsure" if cut < 8 else "length")
    from model_io.sampler import decode_mode

    with decode_mode("static"):  # (the static path has no entropy check: such calls take the dynamic one)
        again = generate(ours, prompts, SamplingConfig(max_new_tokens=8, max_entropy=h, **GREEDY))
    assert again.finish == res.finish and torch.equal(again.tokens, res.tokens)


def test_decode_mode_block_restores_the_previous_mode_even_on_error():
    from model_io import sampler

    with sampler.decode_mode("dynamic"):
        with pytest.raises(RuntimeError):
            with sampler.decode_mode("compiled"):
                assert sampler._decode_mode == "compiled"
                raise RuntimeError("boom")
        assert sampler._decode_mode == "dynamic"
    assert sampler._decode_mode == "auto"
    with pytest.raises(ValueError, match="unknown --decode"):
        with sampler.decode_mode("fast"):
            pass


@pytest.mark.parametrize("static", [False, True])
def test_per_row_caps_end_rows_at_their_own_room(static):
    """max_tokens: each row stops at its own cap (finish "length") with the uncapped tokens up to there; an EOS
    on the cap's own token still ends the row as "eos"; capped rows leave the batch, so fewer tokens run."""
    model = from_hf_model(tiny_hf_model(dtype=torch.float64, vocab=40, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 9, 2, 7], vocab=40)
    cfg = SamplingConfig(max_new_tokens=16, temperature=0.0, eos_ids=(3,))
    free = generate(model, prompts, cfg, static=static)
    ends = [int(n) for n in free.lengths]
    caps = [2, 16, ends[2], max(1, ends[3] - 1)]  # row 2 capped exactly where it ends by itself
    got = generate(model, prompts, cfg, static=static, max_tokens=torch.tensor(caps))
    for r, c in enumerate(caps):
        n = min(c, ends[r])
        assert got.row(r) == free.row(r)[:n] and int(got.lengths[r]) == n
        assert got.finish[r] == (free.finish[r] if ends[r] <= c else "length")
        assert torch.equal(got.logprobs[r, :n], free.logprobs[r, :n]) and not got.logprobs[r, n:].any()
    if not static:  # the dynamic path drops capped rows from the batch
        assert got.forward_tokens < free.forward_tokens
    for bad in ([0, 1, 1, 1], [1, 17, 1, 1], [1, 1, 1]):  # below 1, past max_new_tokens, not one per row
        with pytest.raises(ValueError, match=r"max_tokens must be 4 caps in \[1, 16\]"):
            generate(model, prompts, cfg, static=static, max_tokens=torch.tensor(bad))


def test_top_p_keeps_the_token_that_crosses_p_and_log_probs_stay_untruncated():
    """Nucleus as transformers' TopPLogitsWarper: probs [0.5, 0.3, 0.15, 0.05], top_p 0.6 keeps {0, 1} (0.5 alone
    is short of 0.6, token 1 crosses it), renormalised to [0.625, 0.375]; top_p 0.85 keeps {0, 1, 2} (mass before
    token 2 is 0.8 < 0.85). The returned log-prob is log p at temperature 1 of the untruncated distribution."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from model_io.sampler import _pick

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    R = 4000
    logits = probs.log().expand(R, 4).contiguous()
    for top_p, kept in ((0.6, {0, 1}), (0.85, {0, 1, 2})):
        hf = TopPLogitsWarper(top_p)(None, probs.log()[None].clone())
        assert set(torch.isfinite(hf[0]).nonzero().flatten().tolist()) == kept
        tok, lp = _pick(logits, SamplingConfig(top_p=top_p), torch.Generator().manual_seed(0), torch.arange(R))
        assert set(tok.tolist()) == kept
        assert torch.allclose(lp, probs.log()[tok])
    freq = (tok == 0).double().mean()  # top_p 0.85: 0.5 / 0.95 = 0.526
    assert abs(freq - 0.5 / 0.95) < 0.03
    # temperature 2 flattens the sampling distribution, not the returned log-probs
    tok, lp = _pick(logits, SamplingConfig(temperature=2.0), torch.Generator().manual_seed(0), torch.arange(R))
    assert torch.allclose(lp, probs.log()[tok]) and set(tok.tolist()) == {0, 1, 2, 3}


def test_rare_tokens_are_drawn_with_their_own_probability():
    """Inverse-CDF sampling over a SmolLM2-sized vocabulary: one likely token, 49,151 at p = 2.5e-8 each. In a float32
    cumulative sum the steps near 1 are 6e-8 wide, so these tokens' slices of [0, 1) rounded to 0 or to 1-2 steps:
    about 3 in 5 could never be drawn and the rest came 2-5x too often. Each one's own slice must draw it."""
    from model_io.row_keys import RowKeys
    from model_io.sampler import _pick

    V, q = 49152, 2.5e-8
    logits = torch.zeros(1, V)
    logits[0, 0] = float(torch.tensor((1 - (V - 1) * q) / q).log())  # p0 = 1 - (V - 1) q, within float32 rounding
    p = logits.double().softmax(-1)[0]  # the probabilities the draw should follow
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), p.cumsum(0)])  # token j owns [edges[j], edges[j + 1])
    picks = torch.arange(1, V, 97)  # 507 rare tokens across the vocabulary

    class At(RowKeys):  # a "generator" that returns the chosen u for each row
        def __init__(self, u):
            self.u = u

        def uniform(self, rows, t):
            return self.u[rows]

    mid = (edges[picks] + edges[picks + 1]) / 2 / edges[-1]  # [n] the middle of each chosen token's slice
    tok, lp = _pick(logits.expand(len(picks), V), SamplingConfig(max_new_tokens=1, temperature=1.0),
                    At(mid), torch.arange(len(picks)))
    assert tok.tolist() == picks.tolist()
    assert torch.allclose(lp.double(), p[picks].log(), rtol=1e-5)


class _FixedDraws(RowKeys):
    """Row r draws u[r] at every t: _pick's inverse-CDF step becomes deterministic."""

    def __init__(self, u):
        self.u = torch.tensor(u, dtype=torch.float64)

    def uniform(self, rows, t):
        return self.u[rows]


def test_temperature_divides_the_logits_hand_worked():
    """Sampling at temperature T draws from softmax(logits / T). probs [0.5, 0.3, 0.15, 0.05]:
    T = 2: p^(1/2) = [0.7071, 0.5477, 0.3873, 0.2236] / 1.8657 = [0.3790, 0.2936, 0.2076, 0.1199],
           CDF [0.3790, 0.6726, 0.8801, 1];
    T = 0.5: p^2 = [0.25, 0.09, 0.0225, 0.0025] / 0.365 = [0.6849, 0.2466, 0.0616, 0.0068], CDF [0.6849, 0.9315, 0.9932, 1].
    Draws u on either side of each CDF step pick the token whose slice holds u; log-probs stay those at T = 1."""
    from model_io.sampler import _pick

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    u = [0.37, 0.39, 0.66, 0.68, 0.87, 0.89, 0.92, 0.94, 0.995]
    logits = probs.log().expand(len(u), 4).contiguous()
    rows = torch.arange(len(u))
    tok, lp = _pick(logits, SamplingConfig(temperature=2.0), _FixedDraws(u), rows)
    assert tok.tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert torch.allclose(lp, probs.log()[tok])
    tok, _ = _pick(logits, SamplingConfig(temperature=0.5), _FixedDraws(u), rows)
    assert tok.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 3]


def test_a_draw_of_zero_never_picks_a_token_without_mass():
    """u = 0 (torch.rand and RowKeys can both give it): the pick is the first token whose cumulative mass exceeds 0.
    logits [0, 5, 4]: p = [0.0049, 0.7275, 0.2676]; top_p 0.9 keeps {1, 2} (the mass before token 0, in sorted
    order, is 0.995), so token 0, first in vocabulary order, has no mass: CDF [0, 0.731, 1] and u = 0 must draw
    token 1, not token 0 (searchsorted's left side would). The same with top_k = 2."""
    from model_io.sampler import _pick

    logits = torch.tensor([[0.0, 5.0, 4.0]])
    for cfg in (SamplingConfig(top_p=0.9), SamplingConfig(top_k=2)):
        tok, _ = _pick(logits, cfg, _FixedDraws([0.0]), torch.tensor([0]))
        assert tok.tolist() == [1]


def test_top_p_at_exactly_p_keeps_the_smallest_set():
    """Holtzman et al. 2020: the nucleus is the smallest set of top tokens whose mass is >= p. Four equal logits
    give p = 0.25 each, exactly in float32, so the mass before the k-th token is exactly 0.25 (k - 1): top_p 0.25
    keeps 1 token, 0.5 keeps 2, 0.75 keeps 3 (a token is dropped once the mass before it reaches p, equality
    included; transformers' TopPLogitsWarper agrees). Draws over [0, 1) then reach exactly the kept tokens."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from model_io.sampler import _pick

    u = torch.linspace(0.01, 0.99, 50).tolist()
    logits = torch.zeros(len(u), 4)
    for top_p, kept in ((0.25, 1), (0.5, 2), (0.75, 3)):
        assert int(torch.isfinite(TopPLogitsWarper(top_p)(None, torch.zeros(1, 4))).sum()) == kept
        tok, _ = _pick(logits, SamplingConfig(top_p=top_p), _FixedDraws(u), torch.arange(len(u)))
        assert len(set(tok.tolist())) == kept


def test_a_finished_row_still_in_the_batch_is_not_finished_again():
    """Dynamic path: a finished row stays in the cached batch until a quarter of the rows are done (then the cache
    is compacted), and it still gets a token each step. That token must not end it again: here row r is capped at
    c tokens (finish "length") while the 5 other rows go on, and its next greedy token is made an EOS, one that no
    row samples before step c (so that nothing else ends and the capped row is not compacted away first). Nor is
    that token written into the result: pad_id (0) and log-prob 0 after the row's length."""
    model = from_hf_model(tiny_hf_model(dtype=torch.float64, vocab=40, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 9, 2, 7, 4, 6], vocab=40)
    free = generate(model, prompts, SamplingConfig(max_new_tokens=8, **GREEDY), static=False)
    rows = [free.row(i) for i in range(6)]
    r, c = next((r, c) for r in range(6) for c in range(1, 7) if all(rows[r][c] not in row[: c + 1] for row in rows[:r] + rows[r + 1 :])
                and rows[r][c] not in rows[r][:c])
    caps = torch.full((6,), 8)
    caps[r] = c
    got = generate(model, prompts, SamplingConfig(max_new_tokens=8, eos_ids=(rows[r][c],), **GREEDY), static=False, max_tokens=caps)
    assert got.row(r) == rows[r][:c] and got.finish[r] == "length" and int(got.lengths[r]) == c
    assert (got.tokens[r, c:] == 0).all() and not got.logprobs[r, c:].any()


@pytest.mark.parametrize("static", [False, True])
def test_decode_needs_room_for_all_but_the_last_token(static):
    """The last token is sampled from the previous step's logits and never run through the model, so a prefix with
    max_new_tokens - 1 free slots suffices (and gives generate's tokens); one slot fewer is refused up front."""
    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None))
    prompts = random_prompts([5, 2], vocab=40)
    cfg = SamplingConfig(max_new_tokens=6, **GREEDY)
    want = generate(model, prompts, cfg, static=static)
    got = decode(model, prefill(model, prompts, room=5), cfg, static=static)
    assert torch.equal(got.tokens, want.tokens) and got.lengths.tolist() == [6, 6]
    with pytest.raises(ValueError, match="prefix has room for 4 tokens, needs 5"):
        decode(model, prefill(model, prompts, room=4), cfg, static=static)


def test_per_row_prefill_ignores_whatever_the_padding_slots_held(monkeypatch):
    """A per-row prefill writes each prompt's slots only; the left padding before a short prompt is masked but
    still multiplied (0 * NaN is NaN), and a new cache comes from torch.empty, which may hold anything. Caches
    filled with NaN here: per-row and batched prefills agree, and decoding from them is finite."""
    import model_io.sampler as S
    from model_io import KVCache

    real = KVCache.empty

    def nan_cache(*a, **k):
        c = real(*a, **k)
        c.k.fill_(float("nan")), c.v.fill_(float("nan"))
        return c

    monkeypatch.setattr(S.KVCache, "empty", nan_cache)
    ours = from_hf_model(tiny_hf_model(dtype=torch.float64))
    prompts = random_prompts([2, 7])
    cfg = SamplingConfig(max_new_tokens=4, **GREEDY)
    a = decode(ours, prefill(ours, prompts, room=4, per_row=True), cfg)
    b = decode(ours, prefill(ours, prompts, room=4, per_row=False), cfg)
    assert torch.isfinite(a.logprobs).all() and torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-6)
