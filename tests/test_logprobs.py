"""Chunked log-probs: same values and gradients as the one-shot [B, T, V] computation."""
import torch
from helpers import left_pad, random_prompts, tiny_hf_model

from model_io import token_logprobs
from model_io.convert import from_hf_model
from model_io.logprobs import logprobs_from_hidden


def one_shot(model, tokens):
    logits = model(tokens)[:, :-1].float()
    return logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def test_chunked_equals_one_shot_values_and_gradients():
    model = from_hf_model(tiny_hf_model("qwen2", dtype=torch.float64)).train()
    tokens = torch.randint(0, 259, (3, 23))
    ref = one_shot(model, tokens)
    (ref * torch.arange(22)).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = token_logprobs(model, tokens, chunk=5)  # 5 does not divide 22: a ragged last chunk
    (got * torch.arange(22)).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (3, 22)
    assert torch.allclose(got.double(), ref.double(), atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n


def test_left_padding_does_not_change_log_probs():
    model = from_hf_model(tiny_hf_model(dtype=torch.float64))
    seqs = random_prompts([9, 4])
    ids, mask = left_pad(seqs, pad=0)
    with torch.no_grad():
        batched = token_logprobs(model, ids, key_mask=mask.bool())
        for b, s in enumerate(seqs):
            alone = token_logprobs(model, torch.tensor([s]))[0]
            assert torch.allclose(batched[b, -(len(s) - 1):], alone, atol=1e-6)


def test_no_full_vocab_tensor_is_kept_for_backward():
    """With checkpointing, autograd keeps no [B, chunk, V] logits: the saved tensors are only inputs."""
    B, T, C, V = 2, 64, 8, 1000
    h = torch.randn(B, T, C, requires_grad=True)
    w = torch.randn(V, C, requires_grad=True)
    y = torch.randint(0, V, (B, T))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        lp = logprobs_from_hidden(h, w, y, chunk=16)
    lp.sum().backward()
    assert max(saved) < B * 16 * V  # nothing as large as one chunk's logits survives to backward
    assert h.grad is not None and w.grad is not None
