"""G rows per prompt decoding against the prompt's keys/values in place (model_io/shared_kv.py)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import random_prompts, tiny_hf_model

from model_io import SamplingConfig, generate, prefill
from model_io.convert import from_hf_model
from model_io.row_keys import RowKeys
from model_io.sampler import decode, decode_mode
from model_io.shared_kv import share


def copied_attention(q, pk, pv, pmask, group, k, v, own_valid):
    """The plain way: each row's prompt keys/values copied in front of its own, one SDPA call."""
    kk = torch.cat([pk[group], k], dim=2)
    vv = torch.cat([pv[group], v], dim=2)
    mask = torch.cat([pmask[group], own_valid], dim=1)[:, None, None, :]  # [R, 1, 1, P + S]
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("drop", [None, [0, 3, 4, 7]])
@pytest.mark.parametrize("static", [False, True])
def test_attend_equals_sdpa_over_copied_keys(drop, static):
    """U=2 prompts (the second left-padded by 2), G=4 rows each, 6 query heads over 2 key/value heads; some rows
    dropped (finished), and in the static layout some own slots not yet written (masked)."""
    torch.manual_seed(0)
    U, G, Hkv, H, P, S, D = 2, 4, 2, 6, 5, 3, 8
    pk, pv = torch.randn(1, U, Hkv, P, D), torch.randn(1, U, Hkv, P, D)  # one layer
    pmask = torch.ones(U, P, dtype=torch.bool)
    pmask[1, :2] = False
    pk[0, 1, :, :2] = 0  # padding slots hold zeros, as prefill leaves them
    pv[0, 1, :, :2] = 0
    sh = share(pk, pv, pmask, G, torch.float32)
    rows = torch.arange(U * G) if drop is None else torch.tensor(drop)
    sh = sh.select(rows)
    R = rows.numel()
    q, k, v = torch.randn(R, H, 1, D), torch.randn(R, Hkv, S, D), torch.randn(R, Hkv, S, D)
    own_valid = torch.ones(R, S, dtype=torch.bool)
    own_bias = None
    if static:
        own_valid[:, 2:] = False  # slot 2 not written yet
        own_bias = torch.zeros(R, S).masked_fill_(~own_valid, float("-inf"))[:, None, None, :]
    assert sh.dense == (drop is None)
    got = sh.attend(q, k, v, 0, own_bias)
    want = copied_attention(q, pk[0], pv[0], pmask, rows // G, k, v, own_valid)
    assert got.shape == (R, H, 1, D)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_a_rows_numbers_do_not_depend_on_which_other_rows_are_live():
    torch.manual_seed(1)
    U, G, Hkv, H, P, S, D = 3, 2, 1, 2, 4, 2, 4
    sh = share(torch.randn(1, U, Hkv, P, D), torch.randn(1, U, Hkv, P, D), torch.ones(U, P, dtype=torch.bool), G,
               torch.float32)
    q, k, v = torch.randn(U * G, H, 1, D), torch.randn(U * G, Hkv, S, D), torch.randn(U * G, Hkv, S, D)
    full = sh.attend(q, k, v, 0)
    keep = torch.tensor([1, 4])
    assert torch.equal(sh.select(keep).attend(q[keep], k[keep], v[keep], 0), full[keep])


@pytest.mark.parametrize("static", [False, True])
def test_generate_with_a_shared_prompt_samples_what_copies_of_it_sample(static):
    """Same row keys, the prompt's keys/values read in place or copied: the same tokens; rows end at different
    times (an EOS), so finished rows are dropped (dynamic) or masked (static) on the way."""
    model = from_hf_model(tiny_hf_model("qwen2"))
    prompts = random_prompts([7, 3, 5], seed=2)
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, eos_ids=(5, 17, 40, 99))
    keys = RowKeys.from_names([f"r{i}" for i in range(12)], torch.device("cpu"))
    a = generate(model, prompts, cfg, keys, n=4, pad_id=256, static=static, share_prompt=False)
    b = generate(model, prompts, cfg, keys, n=4, pad_id=256, static=static, share_prompt=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths) and a.finish == b.finish
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    assert len(set(a.lengths.tolist())) > 1 and "eos" in a.finish
    assert a.forward_tokens == b.forward_tokens


def test_generate_shares_by_default_for_groups_and_not_with_the_compiled_step(monkeypatch):
    import types

    import model_io.sampler as S

    seen = []  # (rows, shared?) of each decode call
    monkeypatch.setattr(S, "decode", lambda model, prefix, *a, **k: seen.append((prefix.rows, prefix.cache.prefix is not None))
                        or types.SimpleNamespace(forward_tokens=0))
    model = from_hf_model(tiny_hf_model("llama"))
    cfg = SamplingConfig(max_new_tokens=3, temperature=0.0)
    generate(model, random_prompts([4, 2]), cfg, n=3)
    generate(model, random_prompts([4, 2]), cfg, n=1)
    generate(model, random_prompts([4, 2]), cfg, n=3, share_prompt=False)
    with decode_mode("compiled"):
        generate(model, random_prompts([4, 2]), cfg, n=3)
    assert seen == [(6, True), (2, False), (6, False), (6, False)]


def test_a_shared_prefix_refuses_what_it_cannot_do():
    model = from_hf_model(tiny_hf_model("llama"))
    pre = prefill(model, random_prompts([4, 2]), room=0)
    shared = pre.share(2, room=4)
    with pytest.raises(ValueError, match="fork a prefix before share"):
        shared.fork(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="shared already"):
        shared.share(2, room=4)
    with pytest.raises(ValueError, match="one token per row a step, not 2"):
        model(torch.zeros(4, 2, dtype=torch.long), positions=torch.zeros(4, 2, dtype=torch.long), cache=shared.cache)
    from model_io.static_decode import StaticStep

    with pytest.raises(ValueError, match="compiled decode step takes a plain cache"):
        StaticStep(model, shared.cache, shared.next_pos, compiled=True)
    res = decode(model, shared, SamplingConfig(max_new_tokens=4, temperature=0.0))
    assert res.tokens.shape == (4, 4)
    assert pre.cache.capacity == pre.cache.length  # the prompts' cache holds no room: the rows have their own


def test_a_rows_log_probs_do_not_depend_on_the_other_prompts_of_its_batch():
    """float64, where the copied path is batch-invariant too: prompt 2, padded to prompt 1's length in a batch of
    two, gave other log-probs than alone (its padding led the prompt's slots, and the softmax ran in float32)."""
    model = from_hf_model(tiny_hf_model("llama", dtype=torch.float64)).to(torch.float64)
    prompts = random_prompts([7, 5, 3], seed=3)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0)
    names = [f"r{i}" for i in range(12)]
    both = generate(model, prompts, cfg, RowKeys.from_names(names, torch.device("cpu")), n=4, share_prompt=True)
    for i in range(3):
        one = generate(model, prompts[i : i + 1], cfg, RowKeys.from_names(names[4 * i : 4 * i + 4], torch.device("cpu")),
                       n=4, share_prompt=True)
        assert torch.equal(both.tokens[4 * i : 4 * i + 4], one.tokens)
        assert torch.equal(both.logprobs[4 * i : 4 * i + 4], one.logprobs)


def test_rows_after_an_extended_path_with_padding_share_it_as_copies_would():
    """Tree search: the prompt's cache forked per leaf, the leaf's path read by `extend` (right-aligned, padding
    before it: slots in the middle of the cache hold no token), then K children share prompt + path."""
    from model_io import extend

    model = from_hf_model(tiny_hf_model("qwen2")).to(torch.float64)
    root = prefill(model, random_prompts([6, 4], seed=5), room=0)
    path = torch.tensor([[0, 0, 11, 12], [21, 22, 23, 24]])
    pmask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    keys = RowKeys.from_names([f"c{i}" for i in range(6)], torch.device("cpu"))
    leaves = extend(model, root.fork(torch.tensor([0, 1]), room=4 + 8), path, pmask)
    a = decode(model, leaves.fork(torch.arange(2).repeat_interleave(3)), cfg, keys)
    leaves = extend(model, root.fork(torch.tensor([0, 1]), room=4), path, pmask)
    shared = leaves.share(3, room=8)
    inf = float("-inf")  # both leaves hold 8 tokens in 10 slots (6 + 2 and 4 + 4), moved to the front
    assert shared.cache.prefix.bias[:, 0, 0].tolist() == [[0.0] * 8 + [inf] * 2] * 6
    b = decode(model, shared, cfg, keys)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-9, rtol=0)
