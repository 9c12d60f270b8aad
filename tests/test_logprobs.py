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
    """Autograd keeps no [B, chunk, V] logits: the saved tensors are the inputs and the log-normaliser."""
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


def test_entropy_and_gradients_match_autograd_of_log_softmax():
    """The hand-written backward (softmax from the saved log-normaliser) equals autograd's, for both inputs,
    across ragged chunks; the entropy equals -sum p log p."""
    torch.manual_seed(0)
    B, T, C, V = 3, 11, 6, 50
    h = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, C, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T))
    g = torch.randn(B, T, dtype=torch.float64)
    logp_all = (h @ w.T).log_softmax(-1)
    ref = logp_all.gather(-1, y[..., None]).squeeze(-1)
    gh, gw = torch.autograd.grad((ref * g).sum(), (h, w))
    lp, ent = logprobs_from_hidden(h, w, y, chunk=4, with_entropy=True)
    assert lp.dtype == torch.float32 and not ent.requires_grad
    assert torch.allclose(ent.double(), -(logp_all.exp() * logp_all).sum(-1).detach(), atol=1e-5)
    h2, w2 = torch.autograd.grad((lp.double() * g).sum(), (h, w))
    assert torch.allclose(lp.double(), ref.detach(), atol=1e-5)
    assert torch.allclose(h2, gh, atol=1e-5) and torch.allclose(w2, gw, atol=1e-5)


def test_the_lm_head_runs_in_float32_under_bf16():
    """bf16 logits of a few tens are rounded to steps of 0.125: the head runs in float32 instead (an FP32 head,
    MiniMax-M1 sec. 3.2), both for a bf16 model's logits and for log-probs under bf16 autocast."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 64).bfloat16()
    W = torch.randn(300, 64) * 3  # logits of magnitude ~25
    y = torch.randint(0, 300, (2, 5))
    exact = torch.log_softmax(h.float() @ W.T, -1).gather(-1, y[..., None]).squeeze(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = logprobs_from_hidden(h, W, y)
    assert lp.dtype == torch.float32 and torch.allclose(lp, exact, atol=1e-4)
    rounded = torch.log_softmax((h @ W.bfloat16().T).float(), -1).gather(-1, y[..., None]).squeeze(-1)
    assert (rounded - exact).abs().max() > 1e-2  # what a bf16 head would have given

    model = from_hf_model(tiny_hf_model()).to(torch.bfloat16)
    x = torch.randint(0, 259, (1, 6))
    logits = model(x)
    assert logits.dtype == torch.float32 and not torch.equal(logits, logits.bfloat16().float())
    with torch.no_grad():  # decoding: the upcast copy is kept (under autograd it is made per call, tracked)
        w32 = model.head_weight(torch.float32)
        assert model.head_weight(torch.float32) is w32  # upcast once, not every decode step
        model.lm_head.weight.mul_(2)  # weights change (an optimizer step): the copy is made again
        assert torch.equal(model.head_weight(torch.float32), model.lm_head.weight.float())
    assert model.head_weight(torch.float32).requires_grad


def test_float32_weights_under_bf16_autocast_keep_a_float32_head():
    """GRPO samples under bf16 autocast over float32 master weights: the layers run in bf16, the LM head does not
    (Transformer.logits), so the logits are float32 and equal the float32 head applied to the hidden states; bf16
    hidden states handed to the float32 head are upcast."""
    model = from_hf_model(tiny_hf_model())
    x = torch.randint(0, 259, (2, 7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        h = model.hidden(x)
    want = h.float() @ model.lm_head.weight.T
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, want, atol=1e-4) and not torch.equal(logits, logits.bfloat16().float())
    with torch.no_grad():  # bf16 hidden states given to the float32 head: upcast, not refused
        hb = h.bfloat16()
        assert torch.allclose(model.logits(hb), hb.float() @ model.lm_head.weight.T, atol=1e-4)


def test_gradients_reach_whichever_input_needs_them():
    """A frozen LM head (the hidden states need gradients, the weight not) and the reverse: the hand-written
    backward gives each input that needs one autograd's gradient. T = 9 in chunks of 4: a last chunk of one."""
    torch.manual_seed(1)
    B, T, C, V = 2, 9, 6, 30
    y = torch.randint(0, V, (B, T))
    g = torch.randn(B, T, dtype=torch.float64)
    for needs_h, needs_w in ((True, False), (False, True)):
        h = torch.randn(B, T, C, dtype=torch.float64, requires_grad=needs_h)
        w = torch.randn(V, C, dtype=torch.float64, requires_grad=needs_w)
        x = h if needs_h else w
        ref = (h @ w.T).log_softmax(-1).gather(-1, y[..., None]).squeeze(-1)
        (want,) = torch.autograd.grad((ref * g).sum(), x)
        lp = logprobs_from_hidden(h, w, y, chunk=4)
        assert lp.shape == (B, T) and torch.allclose(lp.double(), ref.detach(), atol=1e-5)
        (got,) = torch.autograd.grad((lp.double() * g).sum(), x)
        assert torch.allclose(got, want, atol=1e-5)


def test_bf16_weights_give_float32_log_probs():
    """bf16 weights (eval --precision bf16) without autocast: the head still runs in float32 (logits of ~25 in bf16
    would be off by up to 0.06), as Transformer.logits does; so does its backward, whose gradients come back in
    bf16."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 64).bfloat16().requires_grad_(True)
    W = (torch.randn(300, 64) * 3).bfloat16().requires_grad_(True)
    y = torch.randint(0, 300, (2, 5))
    h32, W32 = h.detach().float().requires_grad_(True), W.detach().float().requires_grad_(True)
    exact = torch.log_softmax(h32 @ W32.T, -1).gather(-1, y[..., None]).squeeze(-1)
    lp = logprobs_from_hidden(h, W, y)
    assert lp.dtype == torch.float32 and torch.allclose(lp, exact.detach(), atol=1e-4)
    gh, gW = torch.autograd.grad(lp.sum(), (h, W))
    want_h, want_W = torch.autograd.grad(exact.sum(), (h32, W32))
    assert gh.dtype == gW.dtype == torch.bfloat16
    torch.testing.assert_close(gh.float(), want_h, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(gW.float(), want_W, atol=2e-2, rtol=1e-2)


def test_backward_inside_bf16_autocast_stays_float32():
    """A backward run inside the autocast block (as a training loop may) recomputes the logits in float32 too:
    the gradients are float32 autograd's, not bf16's (off by ~1e-2 for logits of ~25)."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 64, requires_grad=True)
    W = (torch.randn(300, 64) * 3).requires_grad_(True)
    y = torch.randint(0, 300, (2, 5))
    want = torch.autograd.grad(torch.log_softmax(h @ W.T, -1).gather(-1, y[..., None]).sum(), (h, W))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.autograd.grad(logprobs_from_hidden(h, W, y).sum(), (h, W))
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-4)
