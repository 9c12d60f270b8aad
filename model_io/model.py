"""Transformer: a from-scratch decoder for the Llama and Qwen2 families.

Embedding -> L x [RMSNorm -> grouped-query attention with RoPE -> residual -> RMSNorm -> SwiGLU -> residual]
-> RMSNorm -> LM head (tied to the embedding or not). Numerics follow transformers' reference implementation
(RMSNorm computed in float32, RoPE cos/sin in float32) so that logits match it to float tolerance.

Two fusions do less work than the reference: q/k/v are one matmul, gate/up are one matmul. The LM head is applied
only where the caller asks (`forward(last_only=True)`, or `hidden` then `logits` on chosen positions), since on a 49k-token vocabulary it is a large part of each forward.
Fewer operations where each is a kernel launch (a GPU decode step: docs/RESULTS.md): RMSNorm's weight inside
F.rms_norm, RoPE's last product and sum in one addcmul, and on a GPU the residual adds inside the output
projections' matmuls (Linear.add_into) and a decode step's attention through SDPA's enable_gqa (GQA_AT_DECODE).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, rope_inv_freq
from .kv_cache import KVCache
from .linear import Linear


def run_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype the layers' matmuls produce: autocast's where it is on (bf16 over float32 weights on a GPU), else
    `default`. Keys/values and the attention mask are made in it."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zhang & Sennrich 2019, with the weight inside F.rms_norm: one operation instead of four (a cast up, the
        # norm, a cast back, the weight's multiply), and on a GPU decode step every operation is a kernel (2.7 ms
        # for 713 of them on an H200: docs/RESULTS.md). F.rms_norm computes a bf16/fp16 input in float32 (its
        # decomposition upcasts; CUDA's fused kernel accumulates in float32) and rounds once, after the weight, where
        # transformers' LlamaRMSNorm rounds before it too. Float32: bitwise the same (tests/test_model.py).
        return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x2, x1] on the last dim: transformers' rotate_half without its negation, which lives in the
    sign of `sin` instead (Transformer.rope), so RoPE is 3 kernels, not 5 (on a GPU decode step, launches
    are the cost)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, x1), dim=-1)


GQA_AT_DECODE = ("cuda",)  # device types where a one-query step attends through SDPA's enable_gqa, not stacked


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention (Ainslie et al. 2023) as plain attention over the key/value heads: q [B, H, T, D],
    k, v [B, H_kv, S, D], mask None or stacked_mask's [B or 1, 1, g*T or 1, S] -> [B, H, T, D]. Query head h reads key/value head h // g (g = H / H_kv, as `enable_gqa` and
    transformers' repeat_kv pair them), so the g query heads of a key/value head are stacked as g*T query rows:
    [B, H_kv, g*T, D]. The same numbers as `scaled_dot_product_attention(..., enable_gqa=True)`, but every fused
    CUDA kernel can take it: flash attention takes no mask, and where a kernel does not take `enable_gqa` with a
    mask SDPA falls back to its math path, which copies the keys/values g times and writes the scores out (per
    decode step: the whole KV cache, g times). The T = 1 decode step needs no copy at all: its mask broadcasts over
    the stacked rows; for T > 1 `stacked_mask` repeats the mask's rows g times, once per forward."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if Hkv == H:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if T == 1 and q.device.type in GQA_AT_DECODE:  # one query a head (a decode step): its mask [B, 1, 1, S]
        # broadcasts over the heads as is, and on an H200 a fused kernel took enable_gqa there in 0.040 ms against
        # 0.055 ms stacked (bench/attention.py, batch 64 over 596 keys; stacked stays faster for a training pass's
        # layer, 0.578 against 0.746 ms: docs/RESULTS.md)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    g = H // Hkv
    assert H == g * Hkv and v.shape[1] == Hkv, f"{H} query heads cannot share {Hkv} key/value heads"
    assert mask is None or mask.shape[-2] in (1, g * T), f"a mask of {mask.shape[-2]} rows for {g} x {T} stacked queries: use stacked_mask"
    y = F.scaled_dot_product_attention(q.reshape(B, Hkv, g * T, D), k, v, attn_mask=mask)  # [B, H_kv, g*T, D]
    return y.reshape(B, H, T, D)  # (a kernel may hand back another memory layout: reshape, not view)


def stacked_mask(allowed: torch.Tensor, g: int, dtype: torch.dtype) -> torch.Tensor:
    """allowed [B, 1, T, S] bool -> the additive mask grouped_attention takes, made once per forward instead of in
    every layer: 0 where allowed, -inf elsewhere, in `dtype` (attention's: SDPA converts a bool mask in every
    call), its rows repeated for the g stacked query heads when T > 1 ([B, 1, g*T, S]; T = 1 broadcasts), and every
    stride but the last a multiple of 8 (a slice of a buffer padded to 8 keys: SDPA copies any other mask into
    such a buffer for its memory-efficient CUDA kernel, attention.cpp preprocess_mask)."""
    B, _, T, S = allowed.shape
    G = g if T > 1 else 1
    out = torch.full((B, 1, G * T, -(-S // 8) * 8), float("-inf"), dtype=dtype, device=allowed.device)[..., :S]
    out.view(B, 1, G, T, S).masked_fill_(allowed[:, :, None], 0.0)  # row j*T + t: query t of stacked head j
    return out  # [B, 1, G*T, S]


@dataclass
class SharedPrefix:
    """Keys/values of U prompts, run once, that many rows continue from (GRPO's G completions of one prompt:
    "Prefix Grouper", 2025). Made with `key_mask` [U, P] marking the prompts' real tokens, it first collects: a pass
    of the prompts stores their keys/values in `kv`; then, with `rows` [B] set to each row's prompt, a pass of the
    rows attends to them (grpo/rollout.py). The prompt tokens go through the
    linear layers once per prompt instead of once per row, and gradients flow back into the shared pass."""

    key_mask: torch.Tensor  # [U, P] bool
    rows: torch.Tensor | None = None  # [B] prompt index of each row; None while collecting
    kv: list = field(default_factory=list)  # per layer: (k, v) [U, H_kv, P, D]

    @property
    def collect(self) -> bool:
        return self.rows is None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h, self.hkv, self.d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = Linear(cfg.dim, (self.h + 2 * self.hkv) * self.d, bias=cfg.qkv_bias)
        self.o = Linear(self.h * self.d, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, layer: int, cache: KVCache | None, shared: "SharedPrefix | None" = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """residual: added to the output (by the output projection's matmul where it can: Linear.add_into)."""
        B, T, _ = x.shape
        qkv = self.qkv(x)
        n_qk = (self.h + self.hkv) * self.d
        qk = qkv[..., :n_qk].view(B, T, self.h + self.hkv, self.d).transpose(1, 2)  # [B, H + H_kv, T, D]
        v = qkv[..., n_qk:].view(B, T, self.hkv, self.d).transpose(1, 2)  # [B, H_kv, T, D]
        # RoPE (Su et al. 2021) on queries and keys in one pass; sin carries rotate_half's sign
        # (addcmul: the second product and the sum in one operation, one rounding in bf16)
        q, k = torch.addcmul(qk * cos, swap_halves(qk), sin).split([self.h, self.hkv], dim=1)  # [B, H, T, D], [B, H_kv, T, D]
        if shared is not None and shared.collect:  # this pass is the prompt: keep its keys/values for the rows
            shared.kv.append((k, v))
        elif shared is not None:  # rows attend to their prompt's keys/values, then their own (autograd-friendly)
            pk, pv = shared.kv[layer]
            k = torch.cat([pk[shared.rows], k], dim=2)  # [B, H_kv, P + T, D]
            v = torch.cat([pv[shared.rows], v], dim=2)
        if cache is not None and cache.slot is not None:  # static shapes: write at a device-side slot, read all
            cache.k[layer].index_copy_(2, cache.slot, k.to(cache.k[layer].dtype))  # index_copy_ does not cast (a slice
            cache.v[layer].index_copy_(2, cache.slot, v.to(cache.v[layer].dtype))  # assignment would): a no-op if equal
            k, v = cache.k[layer], cache.v[layer]  # [B, H_kv, capacity, D]
        elif cache is not None:
            s0 = cache.length
            cache.k[layer, :, :, s0 : s0 + T] = k
            cache.v[layer, :, :, s0 : s0 + T] = v
            k = cache.k[layer, :, :, : s0 + T]  # [B, H_kv, S, D], a view: no copy
            v = cache.v[layer, :, :, : s0 + T]
        if cache is not None and cache.prefix is not None:  # G rows per prompt: k, v are the rows' own; the prompt's
            y = cache.prefix.attend(q, k, v, layer, mask)  # keys/values are read in place (model_io/shared_kv.py)
        else:
            y = grouped_attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, self.h * self.d)
        return self.o(y) if residual is None else self.o.add_into(residual, y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = Linear(cfg.dim, 2 * cfg.intermediate_size, bias=False)
        self.down = Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x, residual: torch.Tensor | None = None):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        h = F.silu(gate) * up  # SwiGLU (Shazeer 2020)
        return self.down(h) if residual is None else self.down.add_into(residual, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, layer, cache, shared=None):
        x = self.attn(self.attn_norm(x), cos, sin, mask, layer, cache, shared, residual=x)  # x + attention
        return self.mlp(self.mlp_norm(x), residual=x)  # x + MLP


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        # RoPE inverse frequencies stay float32 whatever the weights' dtype (as in transformers), so they are kept
        # out of the module's buffers (which .to(dtype) would cast); one copy per device, made on first use.
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # device -> [D/2]

    def __getstate__(self):
        """A copy (copy.deepcopy, pickle) leaves the caches made from these weights behind: the compiled decode step
        (static_decode.compiled_step) is a closure over this model, so a copy holding it would run this model's
        layers; the float32 head copy is remade from the copy's own weight on use."""
        state = super().__getstate__()
        for cache in ("_compiled_step", "_head_key", "_head_copy"):
            state.pop(cache, None)
        return state

    @classmethod
    def empty(cls, cfg: ModelConfig, device="cpu", dtype: torch.dtype = torch.float32) -> "Transformer":
        """Uninitialised weights (to be loaded), allocated once on `device` without a random init first."""
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device=device).to(dtype)
        if cfg.tie_word_embeddings:  # to_empty gives each module its own tensor: tie them again
            model.lm_head.weight = model.embed.weight
        return model

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._inv_freq.get(positions.device)
        if inv_freq is None:
            inv_freq = self._inv_freq[positions.device] = rope_inv_freq(self.cfg).to(positions.device)
        freqs = positions[..., None].float() * inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
        half = freqs.shape[-1]
        sign = torch.cat([-torch.ones(half, device=freqs.device), torch.ones(half, device=freqs.device)])  # [D]
        return emb.cos().to(dtype), (emb.sin() * sign).to(dtype)  # sin signed: x*cos + swap_halves(x)*sin is RoPE

    def hidden(
        self,
        tokens: torch.Tensor,  # [B, T]
        positions: torch.Tensor | None = None,  # [B, T]
        cache: KVCache | None = None,
        key_mask: torch.Tensor | None = None,  # [B, T] bool: False marks padding among the new tokens
        shared: SharedPrefix | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states [B, T, C]. With a cache, the new tokens go to slots [length, length+T)."""
        B, T = tokens.shape
        dev = tokens.device
        if cache is not None and cache.slot is not None:
            return self._static_step(tokens, positions, cache)
        s0 = cache.length if cache is not None else 0
        if shared is not None and not shared.collect:
            assert cache is None, "a shared prefix and a KV cache do not mix"
            s0 = shared.key_mask.shape[1]  # the rows' tokens sit after their prompt's P slots
            own = key_mask if key_mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)
            key_mask = torch.cat([shared.key_mask[shared.rows], own], dim=1)  # [B, P + T]
        if cache is not None and cache.prefix is not None and T != 1:
            raise ValueError(f"a cache of rows sharing their prompt takes one token per row a step, not {T}")
        if cache is not None:
            if s0 + T > cache.capacity:
                raise ValueError(f"KV cache full: {s0} + {T} tokens > capacity {cache.capacity}")
            cache.key_mask[:, s0 : s0 + T] = True if key_mask is None else key_mask
            keys_valid = cache.key_mask[:, : s0 + T]  # [B, S]
        else:
            keys_valid = key_mask
        if positions is None and shared is not None and not shared.collect:
            raise ValueError("rows after a shared prefix need explicit positions")
        if positions is None:
            positions = torch.arange(s0, s0 + T, device=dev).expand(B, T)
        mask = None
        if T > 1 or (keys_valid is not None and not bool(keys_valid.all())):
            # query i sits in slot s0+i; it sees valid slots <= its own, and always itself (so that a padding
            # query attends to something: a row of -inf would give NaN, and 0 * NaN poisons later layers).
            S = s0 + T
            q_slot = torch.arange(s0, S, device=dev)[:, None]  # [T, 1]
            k_slot = torch.arange(S, device=dev)[None, :]  # [1, S]
            causal = k_slot <= q_slot  # [T, S]
            valid = keys_valid[:, None, :] if keys_valid is not None else torch.ones(1, 1, S, dtype=torch.bool, device=dev)
            allowed = ((causal & valid) | (k_slot == q_slot))[:, None]  # [B, 1, T, S]
            mask = stacked_mask(allowed, self.cfg.n_heads // self.cfg.n_kv_heads, run_dtype(dev.type, self.embed.weight.dtype))
        x = self.embed(tokens)
        cos, sin = self.rope(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, i, cache, shared)
        if cache is not None:
            cache.length = s0 + T
        return self.norm(x)

    def _static_step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decode token per row at slot `cache.slot`: fixed shapes, no host synchronisation (capturable in a
        CUDA graph). Every slot is attended under key_mask; slots not yet written must hold zeros, not garbage."""
        x, cos, sin, mask = self._static_start(tokens, positions, cache.key_mask, cache.slot)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, i, cache)
        return self.norm(x)

    def _static_start(self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, slot: torch.Tensor):
        """What a static step's layers take: marks `slot` in key_mask [B, S] (in place) and returns the embedded
        tokens [B, 1, C], RoPE's cos and sin [B, 1, 1, D] and the additive mask [B, 1, 1, S]."""
        assert tokens.shape[1] == 1 and positions is not None, "static decoding reads one token per row, with positions"
        key_mask.index_fill_(1, slot, True)
        x = self.embed(tokens)
        # an additive mask made once per step in the dtype attention runs in: given a bool mask, attention converts
        # it in every layer (a where, two scalar tensors and a cast per call in the profile of one step: 120
        # operations a step, launches on a GPU, where launches are the cost of a decode step); aligned as
        # stacked_mask makes it, or SDPA would copy it for its memory-efficient CUDA kernel in every layer
        mask = stacked_mask(key_mask[:, None, None, :], self.cfg.n_heads // self.cfg.n_kv_heads,
                            run_dtype(x.device.type, x.dtype))  # [B, 1, 1, capacity]
        cos, sin = self.rope(positions, x.dtype)
        return x, cos, sin, mask

    def forward(
        self,
        tokens: torch.Tensor,  # [B, T]
        positions: torch.Tensor | None = None,  # [B, T]
        cache: KVCache | None = None,
        key_mask: torch.Tensor | None = None,  # [B, T]
        last_only: bool = False,
        shared: SharedPrefix | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V], or [B, V] for the last position only (what decoding needs)."""
        h = self.hidden(tokens, positions, cache, key_mask, shared)
        if last_only:
            h = h[:, -1]
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head, in float32 at least whatever the weights' or autocast's dtype: logits of a few tens
        rounded to bf16 are off by up to 0.06 each, so bf16 sampling and training disagree on token
        probabilities by that much (MiniMax-M1, arXiv 2506.13585, sec. 3.2: the fix is an FP32 head). [..., V]"""
        w = self.lm_head.weight
        dt = torch.promote_types(w.dtype, torch.float32)
        if h.dtype == dt and w.dtype == dt and not torch.is_autocast_enabled(h.device.type):
            return self.lm_head(h)  # the plain path (packed weights on CPU)
        with torch.autocast(h.device.type, enabled=False):
            if w.dtype == dt:  # float32 weights under autocast: the float32 head (packed on a CPU)
                return self.lm_head(h.to(dt))
            return F.linear(h.to(dt), self.head_weight(dt))

    def head_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The LM head weight in `dtype`. Low-precision weights (bf16 inference) are upcast once and the copy is
        kept until the weights change (their version counter moves), not re-made every decode step."""
        w = self.lm_head.weight
        if w.dtype == dtype or (torch.is_grad_enabled() and w.requires_grad):
            return w.to(dtype)  # no copy, or a copy autograd must see
        key = (id(w), w.data_ptr(), w._version, w.device, dtype)
        if getattr(self, "_head_key", None) != key:
            self._head_key, self._head_copy = key, w.detach().to(dtype)
        return self._head_copy
