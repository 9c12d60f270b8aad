"""Rollouts: shapes, rewards and advantages; the shared-prompt pass equals running every row in full."""
import torch
from helpers import make_trainer

from grpo.rollout import completion_logprobs, row_generators


def rollout_of(tmp_path, **kw):
    tr = make_trainer(tmp_path, dtype=torch.float64, **kw)
    idx = tr.step_indices(0)
    from grpo.rollout import collect

    ro = collect(tr.model, tr.tok, [tr.train_set[i] for i in idx], tr.prompts(idx), tr.cfg.group_size, tr.sampling,
                 tr.rewards, row_generators(0, 0, idx, tr.cfg.group_size, "cpu"), None, "group")
    return tr, ro


def test_rollout_shapes_and_advantages(tmp_path):
    tr, ro = rollout_of(tmp_path)
    B, G, T = 4, 8, 8
    assert ro.completions.shape == (B * G, T) and ro.old_logp.shape == (B * G, T) and ro.mask.shape == (B * G, T)
    assert ro.rewards.shape == (B, G) and ro.advantages.shape == (B, G) and len(ro.texts) == B * G
    assert torch.allclose(ro.advantages.mean(1), torch.zeros(B), atol=1e-6)  # group-relative
    assert (ro.lengths >= 1).all() and (ro.old_logp[~ro.mask] == 0).all()


def test_shared_prompt_pass_equals_full_rows_values_and_gradients(tmp_path):
    tr, ro = rollout_of(tmp_path)
    model = tr.model.train()
    rows = torch.tensor([0, 1, 5, 8, 9, 17, 30, 31])  # several prompts, uneven rows per prompt
    T = int(ro.mask[rows].sum(-1).max())
    grads = []
    outs = []
    for share in (True, False):
        model.zero_grad()
        lp, ent = completion_logprobs(model, ro, rows, T, pad_id=256, chunk=3, share_prompt=share)
        (lp * ro.mask[rows, :T]).sum().backward()
        outs.append((lp.detach(), ent))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6) and torch.allclose(outs[0][1], outs[1][1], atol=1e-6)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n
    # and both equal the sampler's log-probs of the same tokens
    m = ro.mask[rows, :T]
    assert torch.allclose(outs[0][0][m], ro.old_logp[rows, :T][m], atol=1e-5)


def test_rollout_rows_keep_their_prompts_answers_and_lengths(tmp_path):
    """Rows b*G + g belong to prompt b: the reward of each row is computed against its own prompt's gold answer and
    lands in rewards[b, g]. A stop on any printable character ends rows at different lengths: the mask covers
    exactly each row's sampled tokens (pad after), whose teacher-forced log-probs are the sampler's. --adv-scale
    none: the advantage is r - group mean (Dr. GRPO), not divided by the std."""
    from data import Problem, StopOnText
    from grpo.rewards import RewardSet
    from grpo.rollout import collect
    from helpers import letter_fraction, tiny_tokenizer

    tok = tiny_tokenizer()
    rs = RewardSet({"gold": 1.0, "letters": 1.0}, {"gold": lambda completions, answers, **_: [float(a) for a in answers],
                                                   "letters": letter_fraction(tok)})
    tr = make_trainer(tmp_path, dtype=torch.float64, rewards=rs, problems=[Problem(f"q {i}", str(i), "", i) for i in range(16)])
    idx = tr.step_indices(0)
    B, G = len(idx), tr.cfg.group_size
    stop = StopOnText(tr.tok, [chr(c) for c in range(33, 127)])
    ro = collect(tr.model, tr.tok, [tr.train_set[i] for i in idx], tr.prompts(idx), G, tr.sampling, rs,
                 row_generators(0, 0, idx, G, "cpu"), stop, "none")
    gold = torch.tensor([float(tr.train_set[i].answer) for i in idx])
    assert torch.equal(ro.per_fn["gold"], gold[:, None].expand(B, G))
    assert torch.allclose(ro.rewards, gold[:, None] + ro.per_fn["letters"])
    assert torch.allclose(ro.advantages, ro.rewards - ro.rewards.mean(1, keepdim=True), atol=1e-6)
    L = ro.lengths
    assert L.min() < L.max()  # rows of several lengths
    assert torch.equal(ro.mask, torch.arange(ro.mask.shape[1])[None] < L[:, None])
    assert (ro.completions[~ro.mask] == tr.tok.pad_token_id).all() and (ro.completions[ro.mask] != tr.tok.pad_token_id).all()
    T = int(L.max())
    lp, _ = completion_logprobs(tr.model, ro, torch.arange(B * G), T, tr.tok.pad_token_id)
    m = ro.mask[:, :T]
    assert torch.allclose(lp[m], ro.old_logp[:, :T][m], atol=1e-5) and (ro.old_logp[~ro.mask] == 0).all()
