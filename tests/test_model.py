"""Our decoder against transformers' reference, on tiny random Llama and Qwen2 configs (float64: exact to 1e-10,
but for transformers' RMSNorm, which computes in float32 whatever the input: test_rms_norm_against_transformers)."""
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
        # 1e-5, not 1e-10: transformers' RMSNorm casts float64 down to float32 (ours computes in float64)
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-5)
    for norm in [m for m in hf.modules() if type(m).__name__.endswith("RMSNorm")]:  # made exact, so is the rest
        norm.forward = lambda h, n=norm: torch.nn.functional.rms_norm(h, h.shape[-1:], n.weight, n.variance_epsilon)
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-10)
    assert (ours.lm_head.weight is ours.embed.weight) == (arch == "qwen2")  # tied stays tied


def test_rms_norm_against_transformers():
    """Float32: bitwise transformers' LlamaRMSNorm. bf16: one rounding (after the weight) instead of two, so
    nearer the float64 result than transformers' (which rounds the normalised values to bf16 first)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from model_io.model import RMSNorm

    torch.manual_seed(0)
    x, w = torch.randn(64, 576) * 3, torch.randn(576) * 0.5 + 1
    ours, theirs = RMSNorm(576, 1e-5), LlamaRMSNorm(576, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(w), theirs.weight.copy_(w)
        assert torch.equal(ours(x), theirs(x))
        ours, theirs = ours.bfloat16(), theirs.bfloat16()
        xb = x.bfloat16()
        truth = xb.double() * torch.rsqrt(xb.double().pow(2).mean(-1, keepdim=True) + 1e-5) * ours.weight.double()
        err_ours, err_theirs = (ours(xb).double() - truth).abs(), (theirs(xb).double() - truth).abs()
        assert ours(xb).dtype == torch.bfloat16
        assert err_ours.mean() < 0.8 * err_theirs.mean() and err_ours.max() <= err_theirs.max()


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



def test_linear_rope_scaling_matches_transformers():
    """Linear position interpolation (every frequency divided by the factor), as transformers computes it."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = tiny_hf_config("llama", rope_theta=500000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
    cfg = ModelConfig.from_hf(hf_cfg)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0} and cfg.rope_theta == 500000.0
    expected, _ = ROPE_INIT_FUNCTIONS["linear"](hf_cfg, "cpu")
    assert torch.allclose(rope_inv_freq(cfg), expected)
    plain = rope_inv_freq(ModelConfig.from_hf(tiny_hf_config("llama", rope_theta=500000.0)))
    assert torch.allclose(rope_inv_freq(cfg), plain / 4.0)


def test_from_hf_reads_every_field_and_to_hf_writes_each_back():
    """Each field that is not transformers' default here: a field dropped on the way in (or out, in an export)
    would come back as the default. Llama-3.x-Instruct ends on any of several eos ids; a config may name none."""
    hf = tiny_hf_config("llama", rms_norm_eps=1e-4, max_position_embeddings=333, eos_token_id=[258, 256],
                        bos_token_id=257, pad_token_id=256, rope_theta=500000.0, tie_word_embeddings=True,
                        rope_scaling={"rope_type": "linear", "factor": 2.0})
    cfg = ModelConfig.from_hf(hf)
    assert (cfg.rms_norm_eps, cfg.max_position_embeddings, cfg.eos_token_ids, cfg.bos_token_id, cfg.pad_token_id,
            cfg.rope_theta, cfg.rope_scaling, cfg.tie_word_embeddings, cfg.qkv_bias) == (
        1e-4, 333, (258, 256), 257, 256, 500000.0, {"rope_type": "linear", "factor": 2.0}, True, False)
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    none = ModelConfig.from_hf(tiny_hf_config("qwen2", eos_token_id=None))
    assert none.eos_token_ids == () and ModelConfig.from_hf(none.to_hf()) == none


@pytest.mark.parametrize("kw, says", [
    ({"hidden_act": "gelu"}, "unsupported activation 'gelu': only SwiGLU (silu) models are supported"),
    ({"mlp_bias": True}, "Llama checkpoints with attention_bias or mlp_bias are not supported"),
    ({"attention_bias": True}, "Llama checkpoints with attention_bias or mlp_bias are not supported"),
])
def test_llama_variants_our_decoder_does_not_compute_are_refused(kw, says):
    """A GELU MLP or biases our layers do not have would load with those parts silently dropped."""
    import re

    with pytest.raises(ModelSpecError, match=f"^{re.escape(says)}") as e:
        ModelConfig.from_hf(tiny_hf_config("llama", **kw))
    assert "\n" not in str(e.value)

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


def test_grouped_attention_by_hand():
    """Two query heads share one key/value head (D = 1, so the scale is 1). Head 0 (q = 1) scores the keys 0 and
    ln 3: weights 1/4, 3/4 over values 0, 4 -> 3. Head 1 (q = -1): 3/4, 1/4 -> 1. With the second key masked
    for the second query token, that token reads value 0 in both heads."""
    from model_io.model import grouped_attention, stacked_mask

    ln3 = float(torch.log(torch.tensor(3.0, dtype=torch.float64)))
    k = torch.tensor([0.0, ln3], dtype=torch.float64).view(1, 1, 2, 1)  # [B=1, H_kv=1, S=2, D=1]
    v = torch.tensor([0.0, 4.0], dtype=torch.float64).view(1, 1, 2, 1)
    q = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64).view(1, 2, 2, 1)  # [B, H=2, T=2, D]: same q per token
    mask = torch.tensor([[True, True], [True, False]]).view(1, 1, 2, 2)  # token 1 may not see key 1
    y = grouped_attention(q, k, v, stacked_mask(mask, 2, torch.float64))[0, :, :, 0]  # [H, T]
    assert torch.allclose(y, torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("T, mask_kind", [(1, None), (1, "additive"), (5, "bool"), (5, "bool-broadcast"), (5, None)])
@pytest.mark.parametrize("heads", [(6, 2), (4, 4), (3, 1)])
@pytest.mark.parametrize("decode_gqa", [False, True])
def test_grouped_attention_equals_sdpa_with_enable_gqa(T, mask_kind, heads, decode_gqa, monkeypatch):
    """The stacked form gives SDPA's enable_gqa numbers, forward and backward (float64), whatever the mask: the
    static decode step's additive [B, 1, 1, S], the training pass's bool [B, 1, T, S] (stacked by stacked_mask for
    ours), one mask for all rows. decode_gqa: the one-query step through enable_gqa itself (GPUs take that path)."""
    from model_io import model as model_mod
    from model_io.model import grouped_attention, stacked_mask

    monkeypatch.setattr(model_mod, "GQA_AT_DECODE", ("cpu",) if decode_gqa else ())

    H, Hkv = heads
    B, S, D = 3, 7, 8
    g = torch.Generator().manual_seed(T * 100 + H * 10 + Hkv)
    q = torch.randn(B, H, T, D, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, dtype=torch.float64, generator=g, requires_grad=True)
    keep = torch.rand(B, 1, T, S, generator=g) > 0.3
    keep[..., -1] = True  # every query sees a key
    mask = {None: None, "additive": torch.zeros(B, 1, T, S, dtype=torch.float64).masked_fill(~keep, float("-inf")),
            "bool": keep, "bool-broadcast": keep[:1]}[mask_kind]
    stacked = stacked_mask(mask, H // Hkv, torch.float64) if mask is not None and mask.dtype == torch.bool else mask
    if stacked is not mask and H != Hkv:  # a mask of T rows for g x T stacked queries is refused, not broadcast wrong
        with pytest.raises(AssertionError, match="use stacked_mask"):
            grouped_attention(q, k, v, mask)
    ours = grouped_attention(q, k, v, stacked)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
    assert ours.shape == (B, H, T, D) and torch.allclose(ours, ref, atol=1e-12)
    w = torch.randn(B, H, T, D, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T", [1, 24])
def test_grouped_attention_runs_in_a_fused_cuda_kernel(T):
    """On a GPU, bf16 with a mask (the decode step's additive one, the training pass's bool one, with gradients):
    with SDPA's math path switched off a fused kernel must take the call (SDPA raises "No available kernel"
    otherwise), and agree with float32 math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model_io.model import grouped_attention, stacked_mask

    B, H, Hkv, S, D = 8, 9, 3, 200, 64  # SmolLM2-135M's heads
    g = torch.Generator(device="cuda").manual_seed(T)
    q, k, v = (torch.randn(B, h, n, D, device="cuda", generator=g, dtype=torch.bfloat16)
               for h, n in ((H, T), (Hkv, S), (Hkv, S)))
    keep = torch.rand(B, 1, T, S, device="cuda", generator=g) > 0.3
    keep[..., -1] = True
    mask = torch.zeros(B, 1, 1, S, device="cuda", dtype=torch.bfloat16).masked_fill(~keep, float("-inf")) if T == 1 else keep
    q.requires_grad_(T > 1)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        y = grouped_attention(q, k, v, mask if T == 1 else stacked_mask(mask, H // Hkv, torch.bfloat16))
        if T > 1:
            y.float().sum().backward()
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float() if T == 1 else mask,
                                                          enable_gqa=True)
    assert torch.allclose(y.float(), ref, atol=3e-2)
    assert T == 1 or torch.isfinite(q.grad).all()


def test_stacked_mask_by_hand():
    """Two queries over three keys, g = 2 stacked heads: 0 where allowed, -inf elsewhere, the two rows repeated
    once per stacked head (row j*T + t is query t of head j); one query is not repeated (it broadcasts). Every
    stride but the last is a multiple of 8, as SDPA's memory-efficient CUDA kernel takes a mask without a copy."""
    from model_io.model import stacked_mask

    allowed = torch.tensor([[True, False, False], [True, True, False]]).view(1, 1, 2, 3)
    inf = float("-inf")
    m = stacked_mask(allowed, 2, torch.float64)
    assert m.shape == (1, 1, 4, 3) and m.dtype == torch.float64
    assert m[0, 0].tolist() == [[0, inf, inf], [0, 0, inf], [0, inf, inf], [0, 0, inf]]
    one = stacked_mask(allowed[:, :, 1:], 2, torch.bfloat16)
    assert one.shape == (1, 1, 1, 3) and one[0, 0].tolist() == [[0, 0, inf]]
    assert all(st % 8 == 0 for x in (m, one) for st in x.stride()[:-1]) and m.stride(-1) == one.stride(-1) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_a_forward_makes_its_mask_once_stacked_and_aligned(arch, monkeypatch):
    """Padding and T > 1: every layer gets the same additive mask, already stacked for its query heads and
    aligned (one made per forward, not one conversion per layer); the logits are those of each row alone."""
    import model_io.model as mm

    seen = []
    plain = mm.grouped_attention
    monkeypatch.setattr(mm, "grouped_attention", lambda q, k, v, mask: seen.append((q.shape, mask)) or plain(q, k, v, mask))
    ours = from_hf_model(tiny_hf_model(arch, dtype=torch.float64))
    prompts = random_prompts([5, 11])
    ids, mask = left_pad(prompts, pad=0)
    with torch.no_grad():
        out = ours(ids, positions=(mask.long().cumsum(-1) - 1).clamp(min=0), key_mask=mask.bool())
    g = ours.cfg.n_heads // ours.cfg.n_kv_heads
    assert len(seen) == ours.cfg.n_layers and len({id(m) for _, m in seen}) == 1
    (B, H, T, D), m = seen[0]
    assert m.dtype == torch.float64 and m.shape == (B, 1, g * T, T) and g > 1
    assert all(st % 8 == 0 for st in m.stride()[:-1])
    with torch.no_grad():
        assert torch.allclose(out[0, -5:], ours(torch.tensor([prompts[0]]))[0], atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_added_in_the_matmul_gives_the_same_model(arch, monkeypatch):
    """Linear.add_into (GPUs: the residual add folded into the output projections' addmm) against the plain add,
    forced onto the CPU: the same logits and gradients in float64; not taken under autocast (a float32 residual
    stream beside bf16 matmuls) nor with mismatched dtypes."""
    from model_io import linear

    torch.manual_seed(0)
    ours = from_hf_model(tiny_hf_model(arch, dtype=torch.float64))
    x = torch.randint(0, 259, (3, 21))
    plain = ours(x)
    g_plain = torch.autograd.grad(plain.square().sum(), [p for p in ours.parameters()])
    calls = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or addmm(*a, **k))
    monkeypatch.setattr(linear, "RESIDUAL_IN_GEMM", ("cpu",))
    fused = ours(x)
    assert len(calls) == 2 * ours.cfg.n_layers  # the attention's and the MLP's output projections, every layer
    g_fused = torch.autograd.grad(fused.square().sum(), [p for p in ours.parameters()])
    assert torch.allclose(plain, fused, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g_plain, g_fused))
    calls.clear()
    lin = ours.layers[0].attn.o  # float64
    lin.add_into(torch.zeros(2, lin.out_features), torch.ones(2, lin.in_features, dtype=torch.float64))  # a float32 residual
    lin.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin.add_into(torch.zeros(2, lin.out_features), torch.ones(2, lin.in_features))
    assert calls == []
    lin.add_into(torch.zeros(2, lin.out_features), torch.ones(2, lin.in_features))  # (and without autocast it is)
    assert calls == [1]


def test_cached_tokens_without_positions_continue_from_the_cache():
    """With a cache and no positions, the new tokens take the positions of their slots [length, length + T):
    a prompt read in two parts, the second without positions, gives the one-pass logits."""
    ours = from_hf_model(tiny_hf_model(dtype=torch.float64))
    x = torch.randint(0, 259, (2, 10))
    with torch.no_grad():
        full = ours(x)
        cache = KVCache.empty(ours.cfg, 2, 10, "cpu", torch.float64)
        parts = torch.cat([ours(x[:, :6], cache=cache), ours(x[:, 6:], cache=cache)], dim=1)
    assert torch.allclose(parts, full, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_query_row_of_the_mask_is_fully_masked(arch, monkeypatch):
    """A padding query (left padding, key_mask False) still sees its own slot: a mask row of -inf only would give
    NaN in the fused GPU kernels (CPU SDPA returns 0 there, so only the mask itself shows it). Training's pass over
    left-padded rows and a decode step over a padded cache both."""
    import model_io.model as mm
    from model_io import prefill

    seen = []
    plain = mm.grouped_attention
    monkeypatch.setattr(mm, "grouped_attention", lambda q, k, v, mask: seen.append(mask) or plain(q, k, v, mask))
    ours = from_hf_model(tiny_hf_model(arch, dtype=torch.float64))
    prompts = random_prompts([2, 7])
    ids, mask = left_pad(prompts, pad=0)
    with torch.no_grad():
        ours(ids, positions=(mask.long().cumsum(-1) - 1).clamp(min=0), key_mask=mask.bool())
        pre = prefill(ours, prompts, room=2, per_row=False)
        ours(pre.logits.argmax(-1)[:, None], positions=pre.next_pos[:, None], cache=pre.cache)
    assert len(seen) == 3 * ours.cfg.n_layers and all(m is not None for m in seen)
    for m in seen:
        assert (m > float("-inf")).any(-1).all()


def test_a_shared_prefix_refuses_a_cache_and_missing_positions():
    """Rows after a shared prefix take neither a KV cache nor default positions (their prompt's padding decides
    where each row's tokens sit): both are refused by name."""
    from model_io.model import SharedPrefix

    model = from_hf_model(tiny_hf_model())
    prompts = random_prompts([3, 5])
    ptok, pmask = left_pad(prompts, pad=0)
    shared = SharedPrefix(key_mask=pmask.bool())
    with torch.no_grad():
        model.hidden(ptok, positions=(pmask.cumsum(-1) - 1).clamp(min=0), key_mask=pmask.bool(), shared=shared)
        shared.rows = torch.tensor([0, 1])
        comp = torch.randint(0, 256, (2, 2))
        with pytest.raises(ValueError, match="need explicit positions"):
            model.hidden(comp, shared=shared)
        cache = KVCache.empty(model.cfg, 2, 8, "cpu", torch.float32)
        with pytest.raises(AssertionError, match="do not mix"):
            model.hidden(comp, positions=torch.zeros(2, 2, dtype=torch.long), cache=cache, shared=shared)


def test_rows_after_a_shared_prefix_honour_their_own_key_mask():
    """A row's own tokens may hold padding (key_mask False) too: no later token of the row attends to it. Prompt
    of 3 tokens shared by two rows, [pad, a, b] and [c, d, e]: each row's real tokens equal prompt + them alone."""
    from model_io.model import SharedPrefix

    model = from_hf_model(tiny_hf_model(dtype=torch.float64))
    prompt = random_prompts([3], seed=4)[0]
    own = torch.tensor([[0, 11, 12], [21, 22, 23]])
    omask = torch.tensor([[False, True, True], [True, True, True]])
    shared = SharedPrefix(key_mask=torch.ones(1, 3, dtype=torch.bool))
    with torch.no_grad():
        model.hidden(torch.tensor([prompt]), shared=shared)
        shared.rows = torch.tensor([0, 0])
        pos = 3 + (omask.long().cumsum(-1) - 1).clamp(min=0)
        got = model.hidden(own, positions=pos, key_mask=omask, shared=shared)
        for r, n in ((0, 2), (1, 3)):
            alone = model.hidden(torch.tensor([prompt + own[r, 3 - n:].tolist()]))[0, 3:]
            assert torch.allclose(got[r, 3 - n:], alone, atol=1e-10), r


def test_a_copy_leaves_the_packed_weights_and_the_compiled_step_behind(monkeypatch):
    """Seen in review: after any no-grad CPU pass a Linear holds a oneDNN-packed weight, and copy.deepcopy(model)
    raised NotImplementedError (an opaque tensor has no storage); a copy made after `--decode compiled` shared the
    original's compiled step, a closure over the original's layers, so the copy decoded with the original's weights."""
    import copy

    from model_io import SamplingConfig, generate
    from model_io.sampler import decode_mode

    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)  # the closure is what matters here, not inductor
    model = from_hf_model(tiny_hf_model("llama"))
    prompts, cfg = random_prompts([6, 9], seed=0), SamplingConfig(max_new_tokens=8, temperature=0)
    with decode_mode("compiled"):
        generate(model, prompts, cfg)  # packs the CPU linears (if oneDNN is there) and makes the compiled step
        twin = copy.deepcopy(model)
        assert not hasattr(twin, "_compiled_step") and all(getattr(m, "_packed", None) is None for m in twin.modules())
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(-1.0)  # the copy's weights only
        compiled = generate(twin, prompts, cfg)
    with decode_mode("dynamic"):
        assert torch.equal(compiled.tokens, generate(twin, prompts, cfg).tokens)
    assert model._compiled_step is not twin._compiled_step
