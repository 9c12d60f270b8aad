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


def test_policy_and_old_logprobs_at_padding_cannot_poison_the_loss_either():
    """The padding's policy and old log-probs (the training pass's and the recomputed old pass's log-probs of pad
    tokens) are arbitrary too: on a row with A < 0, logp = +100 or old = -100 there makes ratio = e^100 = inf and
    -min(-inf, -0.8) = +inf; logp = -100 with a reference makes the k3 term e^(0 + 100) = inf. All must be zeroed
    before the exp(), or inf * 0 = NaN reaches the loss and the gradient."""
    logp = torch.tensor([[-1.0, 100.0], [-1.0, -100.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -100.0], [-1.0, 0.0]])
    ref = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]])
    mask = torch.tensor([[True, False], [True, False]])
    loss, st = policy_loss(logp, old, ref, torch.tensor([-1.0, 1.0]), mask, beta=0.04)
    loss.backward()
    # on the two real tokens ratio = 1 and KL = 0: per-token losses +1 and -1, mean 0
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(logp.grad).all() and (logp.grad[:, 1] == 0).all()


def test_asymmetric_clip_bounds_by_hand():
    """Clip-higher (DAPO, Yu et al. 2025, eq. 10): the ratio is clipped to [1 - eps_low, 1 + eps_high], here
    [0.8, 1.28]. Row 0 (A = +1) ratios 1.25, 1.3: -min(1.25, 1.28) = -1.25 (unclipped, d/dlogp = -ratio * A = -1.25)
    and -min(1.3, 1.28) = -1.28 (clipped, no gradient). Row 1 (A = -1) ratios 0.75, 0.85: -min(-0.75, -0.8) = 0.8
    (clipped, no gradient) and 0.85 (unclipped, d/dlogp = +0.85). seq-mean-token-mean: ((-1.25 - 1.28) / 2 +
    (0.8 + 0.85) / 2) / 2 = -0.22; each token's gradient is divided by 2 tokens x 2 sequences."""
    logp = torch.log(torch.tensor([[1.25, 1.3], [0.75, 0.85]])).requires_grad_()
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, st = policy_loss(logp, torch.zeros(2, 2), None, torch.tensor([1.0, -1.0]), mask, eps_low=0.2, eps_high=0.28,
                           beta=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(-0.22, abs=1e-6)
    assert torch.allclose(logp.grad, torch.tensor([[-1.25 / 4, 0.0], [0.0, 0.85 / 4]]), atol=1e-6)
    # one token above 1 + eps_high with A > 0, one below 1 - eps_low with A < 0 (1.25 > 1.2 is not clipped here)
    assert st.clip_high == pytest.approx(1 / 4) and st.clip_low == pytest.approx(1 / 4)


def test_per_token_advantages_by_hand():
    """Tree rollouts give each token its own advantage ([N, T]); clipping and the stats then go token by token.
    Ratios [[1, 1.5, pad], [0.5, 0.5, 1]], A [[1, 0, pad], [-1, 0, 3]]:
      (0,0) -min(1, 1) = -1, grad -1;  (0,1) A = 0: 0, grad 0;  (1,0) -min(-0.5, -0.8) = 0.8, clipped, grad 0;
      (1,1) A = 0: 0;  (1,2) -3, grad -3.
    seq-mean-token-mean: ((-1 + 0) / 2 + (0.8 + 0 - 3) / 3) / 2 = -37/60; token-mean: (-1 + 0.8 - 3) / 5 = -0.64."""
    logp = torch.log(torch.tensor([[1.0, 1.5, 1.0], [0.5, 0.5, 1.0]])).requires_grad_()
    A = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, st = policy_loss(logp, torch.zeros(2, 3), None, A, mask, beta=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(-37 / 60)
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 4, 0.0, 0.0], [0.0, 0.0, -3 / 6]]), atol=1e-6)
    assert policy_loss(logp, torch.zeros(2, 3), None, A, mask, beta=0.0, agg="token-mean")[0].item() == pytest.approx(-0.64)
    # stats over the 5 real tokens: a token with A = 0 is clipped in neither direction, whatever its ratio
    assert st.clip_low == pytest.approx(1 / 5) and st.clip_high == 0.0
    assert st.ratio == pytest.approx((1 + 1.5 + 0.5 + 0.5 + 1) / 5) and st.tokens == 5  # padding's ratio not counted
    # a per-sequence advantage [N] is the same as that value on every token [N, T]
    a = torch.tensor([0.7, -1.3])
    one, _ = policy_loss(logp.detach(), torch.zeros(2, 3), None, a, mask, beta=0.0)
    each, _ = policy_loss(logp.detach(), torch.zeros(2, 3), None, a[:, None].expand(2, 3), mask, beta=0.0)
    assert torch.equal(one, each)


def test_a_row_without_tokens_adds_nothing():
    """seq-mean-token-mean divides each row's token sum by its token count: a row with none (0 / 0) must count 0,
    not NaN. Row 0: one token, ratio 1, A = 1 -> -1; row 1 empty; mean over the 2 sequences: -0.5."""
    logp = torch.zeros(2, 2, requires_grad=True)
    mask = torch.tensor([[True, False], [False, False]])
    loss, _ = policy_loss(logp, torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([1.0, 1.0]), mask, beta=0.04)
    loss.backward()
    assert loss.item() == pytest.approx(-0.5) and torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad, torch.tensor([[-0.5, 0.0], [0.0, 0.0]]))
