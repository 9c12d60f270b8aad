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
