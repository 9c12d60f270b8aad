"""Weight name mapping between transformers' Llama/Qwen2 layout and ours (fused q/k/v and gate/up)."""
from __future__ import annotations

import torch

from .config import ModelConfig
from .model import Transformer


def from_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> our names; q/k/v and gate/up concatenated along the output dimension."""
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    # tied: the LM head is the embedding (the same Parameter in our module, one tensor in the file)
    out["lm_head.weight"] = out["embed.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out[f"layers.{i}.attn.qkv.weight"] = torch.cat([sd[a + n + "_proj.weight"] for n in "qkv"])
        if cfg.qkv_bias:
            out[f"layers.{i}.attn.qkv.bias"] = torch.cat([sd[a + n + "_proj.bias"] for n in "qkv"])
        out[f"layers.{i}.attn.o.weight"] = sd[a + "o_proj.weight"]
        out[f"layers.{i}.mlp.gate_up.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.mlp.down.weight"] = sd[p + "mlp.down_proj.weight"]
        out[f"layers.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[f"layers.{i}.mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our names -> transformers names (the inverse of `from_hf_state_dict`); tensors are contiguous copies."""
    cfg = model.cfg
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        for n, t in zip("qkv", sd[f"layers.{i}.attn.qkv.weight"].split([q, kv, kv])):
            out[a + n + "_proj.weight"] = t
        if cfg.qkv_bias:
            for n, t in zip("qkv", sd[f"layers.{i}.attn.qkv.bias"].split([q, kv, kv])):
                out[a + n + "_proj.bias"] = t
        out[a + "o_proj.weight"] = sd[f"layers.{i}.attn.o.weight"]
        gate, up = sd[f"layers.{i}.mlp.gate_up.weight"].chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = sd[f"layers.{i}.mlp.down.weight"]
        out[p + "input_layernorm.weight"] = sd[f"layers.{i}.attn_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[f"layers.{i}.mlp_norm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def from_hf_model(hf_model, dtype: torch.dtype | None = None) -> Transformer:
    """Our Transformer with the weights of a transformers LlamaForCausalLM / Qwen2ForCausalLM (which can then be dropped)."""
    cfg = ModelConfig.from_hf(hf_model.config)
    sd = from_hf_state_dict(cfg, dict(hf_model.state_dict()))
    dtype = dtype or next(iter(sd.values())).dtype
    model = Transformer.empty(cfg, "cpu", dtype)
    model.load_state_dict(sd, strict=True)
    return model
