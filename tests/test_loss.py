"""GRPO maths with numbers worked out by hand, and a gradient check against a naive per-token loop."""
import math

import pytest
import torch

from grpo.loss import group_advantages, kl_k3, policy_loss


def test_group_advantages_hand_worked():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 0: mean 0.5, centred +-0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735
    a = group_advantages(r, "group", eps=0.0)
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / math.sqrt(1 / 3))
    assert torch.equal(a[1], torch.zeros(4))  # equal rewards: no signal, and no NaN
    assert torch.equal(group_advantages(r, "none"), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0, 0, 0]]))
    # batch: one std over all 8 rewards; mean 1.25, squares of deviations: 2*(0.0625)+2*(1.5625)+4*(0.5625) = 5.5
    std = math.sqrt(5.5 / 7)
    assert torch.allclose(group_advantages(r, "batch", eps=0.0)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.allclose(group_advantages(r, "group")[0, 0], torch.tensor(0.5 / (math.sqrt(1 / 3) + 1e-4)))
    with pytest.raises(ValueError, match="unknown advantage scale 'rank'"):
        group_advantages(r, "rank")


@pytest.mark.parametrize("value", [0.3, 0.1, 0.7, 2.874])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exactly_zero_advantage(value, scale):
    """float32 means of equal values can be one ulp off them (4 x 8 copies of 0.3: mean - 0.3 = 3e-8); divided
    by std + eps = 1e-4 that ulp would give a whole flat group one same-signed advantage."""
    r = torch.full((4, 8), value)
    assert (r - r.mean(1, keepdim=True)).abs().max() > 0 or value != 0.3  # the rounding this test is about
    assert torch.equal(group_advantages(r, scale), torch.zeros(4, 8))
    mixed = torch.cat([r[:1], torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]])])  # a flat group beside a live one
    a = group_advantages(mixed, scale)
    assert torch.equal(a[0], torch.zeros(8)) and a[1].abs().sum() > 0


def test_kl_k3_hand_worked():
    logp = torch.tensor([0.0, -1.0, -2.0])
    ref = torch.tensor([0.0, -2.0, -1.0])
    # d = ref - logp = [0, -1, 1]: e^0-0-1 = 0; e^-1+1-1 = 0.367879; e^1-1-1 = 0.718282
    assert torch.allclose(kl_k3(logp, ref), torch.tensor([0.0, math.exp(-1), math.e - 2]))
    x = torch.randn(1000) * 3
    assert (kl_k3(x, torch.randn(1000)) >= 0).all()
    # small divergences in float32: k3 = d^2/2 + d^3/6 + ...; at d = +-1e-4: 5.0001667e-9 and 4.9998333e-9
    small = kl_k3(torch.zeros(2), torch.tensor([1e-4, -1e-4]))
    assert small.tolist() == pytest.approx([5.0001667e-9, 4.9998333e-9], rel=1e-3)
    d = torch.linspace(-1e-3, 1e-3, 10001)
    assert (kl_k3(torch.zeros_like(d), d) >= 0).all()  # no negative KL from rounding


def test_policy_loss_hand_worked():
    # two sequences, T = 2; sequence 0 has 2 tokens with A = +1, sequence 1 has 1 token with A = -1
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]])
    old = torch.zeros(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    A = torch.tensor([1.0, -1.0])
    # ratios [[1.5, 1], [0.5, .]]: seq 0 token 0: -min(1.5, 1.2) = -1.2; token 1: -1; seq 1: -min(-0.5, -0.8) = 0.8
    loss, st = policy_loss(logp, old, None, A, mask, beta=0.0)
    assert loss.item() == pytest.approx(((-1.2 - 1.0) / 2 + 0.8) / 2)  # seq-mean-token-mean
    assert st.clip_high == pytest.approx(1 / 3) and st.clip_low == pytest.approx(1 / 3)
    assert st.ratio == pytest.approx((1.5 + 1 + 0.5) / 3) and st.kl == 0.0 and st.tokens == 3
    loss, _ = policy_loss(logp, old, None, A, mask, beta=0.0, agg="token-mean")
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    loss, _ = policy_loss(logp, old, None, A, mask, beta=0.0, agg="seq-mean-token-sum-norm", max_len=4)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / (2 * 4))
    # with a reference: KL of seq 0 token 0 with ref = 0: d = -log 1.5 -> 1/1.5 + log 1.5 - 1 = 0.072132
    ref = torch.zeros(2, 2)
    loss_kl, st = policy_loss(logp, old, ref, A, mask, beta=0.5)
    kl = [2 / 3 + math.log(1.5) - 1, 0.0, 2 + math.log(0.5) - 1]
    assert st.kl == pytest.approx(sum(kl) / 3)
    assert loss_kl.item() == pytest.approx((((-1.2 + 0.5 * kl[0]) + (-1.0)) / 2 + (0.8 + 0.5 * kl[2])) / 2)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(logp, old, None, A, mask, beta=0.1)


def naive_loss(logp, old, ref, A, mask, eps_low, eps_high, beta, agg, max_len):
    """Per token, in Python loops: the definition written out."""
    seq_terms, tok_terms, n_tok = [], [], 0
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            r = torch.exp(logp[i, t] - old[i, t])
            surr = torch.min(r * A[i], torch.clamp(r, 1 - eps_low, 1 + eps_high) * A[i])
            d = ref[i, t] - logp[i, t]
            terms.append(-surr + beta * (torch.exp(d) - d - 1))
        n_tok += len(terms)
        seq_terms.append(sum(terms) / max(len(terms), 1))
        tok_terms.append(sum(terms) if terms else torch.tensor(0.0))
    if agg == "seq-mean-token-mean":
        return sum(seq_terms) / len(seq_terms)
    if agg == "token-mean":
        return sum(tok_terms) / n_tok
    return sum(tok_terms) / (len(tok_terms) * max_len)


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_gradient_matches_naive_loop_and_micro_batches_sum_to_full_batch(agg):
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    base = torch.randn(N, T, generator=g) * 0.3
    old = base + torch.randn(N, T, generator=g) * 0.2  # ratios away from 1, some clipped
    ref = base + torch.randn(N, T, generator=g) * 0.2
    A = torch.randn(N, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(T)[None] < lengths[:, None]
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.1, agg=agg)

    logp = base.clone().requires_grad_()
    policy_loss(logp, old, ref, A, mask, **kw)[0].backward()
    full = logp.grad.clone()

    logp_n = base.clone().requires_grad_()
    naive_loss(logp_n, old, ref, A, mask, 0.2, 0.28, 0.1, agg, T).backward()
    assert torch.allclose(full, logp_n.grad, atol=1e-6)

    logp_m = base.clone().requires_grad_()
    for s in (slice(0, 2), slice(2, 5), slice(5, 6)):  # uneven micro-batches, global normalisers
        loss, _ = policy_loss(logp_m[s], old[s], ref[s], A[s], mask[s], n_seqs=N, n_tokens=int(mask.sum()), max_len=T, **kw)
        loss.backward()
    assert torch.allclose(full, logp_m.grad, atol=1e-6)
    assert (full[~mask] == 0).all()  # padding gets no gradient


def test_padding_cannot_poison_the_loss():
    """Log-probs at padding positions are arbitrary: a value there whose exp() overflows must not turn the loss
    or the gradient into NaN (inf * 0)."""
    logp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -200.0]])
    ref = torch.tensor([[-1.0, -2.0, 300.0]])  # exp(ref - logp) = inf at the padding
    mask = torch.tensor([[True, True, False]])
    loss, st = policy_loss(logp, old, ref, torch.tensor([1.0]), mask, beta=0.04)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
