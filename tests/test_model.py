"""Our decoder against transformers' reference, on tiny random Llama and Qwen2 configs (float64: exact to 1e-10)."""
import pytest
import torch
from helpers import left_pad, random_prompts, tiny_hf_config, tiny_hf_model

from model_io import KVCache, ModelConfig, ModelSpecError
from model_io.config import rope_inv_freq
from model_io.convert import from_hf_model

ARCHS = ["llama", "qwen2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch):
    hf = tiny_hf_model(arch, dtype=torch.float64)
    ours = from_hf_model(hf)
    x = torch.randint(0, 259, (3, 21))
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-10)
    assert (ours.lm_head.weight is ours.embed.weight) == (arch == "qwen2")  # tied stays tied


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_rows_equal_unpadded_rows(arch):
    ours = from_hf_model(tiny_hf_model(arch, dtype=torch.float64))
    prompts = random_prompts([5, 11, 2])
    ids, mask = left_pad(prompts, pad=0)
    mask = mask.bool()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = ours(ids, positions=pos, key_mask=mask)  # [B, T, V]
        for b, p in enumerate(prompts):
            alone = ours(torch.tensor([p]))[0]
            assert torch.allclose(batched[b, -len(p):], alone, atol=1e-10)
            assert torch.isfinite(batched[b]).all()  # padding queries attend to themselves: no NaN


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_forward(arch):
    ours = from_hf_model(tiny_hf_model(arch, dtype=torch.float64))
    x = torch.randint(0, 259, (2, 12))
    with torch.no_grad():
        full = ours(x)
        cache = KVCache.empty(ours.cfg, 2, 16, "cpu", torch.float64)
        steps = [ours(x[:, :7], cache=cache)]
        for t in range(7, 12):
            steps.append(ours(x[:, t : t + 1], positions=torch.full((2, 1), t), cache=cache))
    assert cache.length == 12
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)


def test_cache_overflow_is_an_error():
    ours = from_hf_model(tiny_hf_model())
    cache = KVCache.empty(ours.cfg, 1, 4, "cpu", torch.float32)
    with pytest.raises(ValueError, match="KV cache full"):
        ours(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_llama3_rope_scaling_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = tiny_hf_config("llama", max_position_embeddings=16384, rope_theta=500000.0,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg = ModelConfig.from_hf(hf_cfg)
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    assert torch.allclose(rope_inv_freq(cfg), expected)
    plain = rope_inv_freq(ModelConfig.from_hf(tiny_hf_config("llama", rope_theta=500000.0)))
    assert not torch.allclose(rope_inv_freq(cfg), plain)  # the scaling did something


def test_other_architectures_are_refused_in_one_line():
    from transformers import GPT2Config

    with pytest.raises(ModelSpecError, match="supported are llama, qwen2") as e:
        ModelConfig.from_hf(GPT2Config())
    assert "\n" not in str(e.value)


def test_config_round_trips_through_json_and_transformers():
    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2"))
    assert cfg.qkv_bias and cfg.tie_word_embeddings and cfg.n_kv_heads == 2
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg


def test_packed_cpu_linear_matches_plain(monkeypatch):
    import model_io.linear as linear

    ours = from_hf_model(tiny_hf_model("qwen2"))
    x = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        packed = ours(x)
        monkeypatch.setattr(linear, "ENABLED", False)
        plain = ours(x)
    assert torch.allclose(packed, plain, atol=1e-5)
    # an in-place weight update invalidates the packed copy
    monkeypatch.setattr(linear, "ENABLED", True)
    with torch.no_grad():
        ours.lm_head.weight.mul_(2.0)  # tied: the embedding doubles too
        after = ours(x)
        monkeypatch.setattr(linear, "ENABLED", False)
        after_plain = ours(x)
    assert torch.allclose(after, after_plain, atol=1e-5) and not torch.allclose(after, packed, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_rows_equal_each_row_alone_values_and_gradients(arch):
    """Prefix Grouper: left-padded prompts of lengths 3, 9, 6 run once; 7 right-padded completions of lengths 1-7
    attend to their prompt's keys/values. Each row's hidden states equal prompt + completion run alone, and so
    do the gradients of a weighted sum over the real tokens (float32-level: RMSNorm runs in float32)."""
    from model_io.model import SharedPrefix

    model = from_hf_model(tiny_hf_model(arch, dtype=torch.float64)).train()
    prompts = random_prompts([3, 9, 6], seed=2)
    rows, lens = torch.tensor([0, 0, 1, 2, 2, 2, 1]), [4, 7, 1, 5, 7, 3, 2]
    T = max(lens)
    comp = torch.randint(0, 256, (7, T), generator=torch.Generator().manual_seed(5))
    cmask = torch.arange(T)[None] < torch.tensor(lens)[:, None]  # [7, T]
    ptok, pmask = left_pad(prompts, pad=256)
    pmask = pmask.bool()
    ppos = (pmask.long().cumsum(-1) - 1).clamp(min=0)
    cpos = pmask.sum(-1)[rows][:, None] + torch.arange(T)  # [7, T]
    wts = torch.randn(7, T, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    shared = SharedPrefix(key_mask=pmask)
    hp = model.hidden(ptok, positions=ppos, key_mask=pmask, shared=shared)  # [3, P, C]
    shared.rows = rows
    hc = model.hidden(comp, positions=cpos, key_mask=cmask, shared=shared)  # [7, T, C]
    hidden = torch.cat([hp[rows, -1:], hc], dim=1)  # [7, 1 + T, C]: prompt's last slot, then the completion
    (hidden[:, 1:] * wts * cmask[..., None]).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # untied head: no grad
    model.zero_grad()
    total = 0
    for r in range(7):
        p, n = prompts[int(rows[r])], lens[r]
        alone = model.hidden(torch.tensor([p + comp[r, :n].tolist()]))[0, len(p) - 1:]  # [1 + n, C]
        assert torch.allclose(hidden[r, : 1 + n], alone, atol=1e-6), r
        total = total + (alone[1:] * wts[r, :n]).sum()
    total.backward()
    assert len(got) >= 14 and got.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in got:
            assert torch.allclose(got[name], p.grad, rtol=1e-5, atol=1e-5), name
