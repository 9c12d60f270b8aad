"""The GRPO loop on tiny random models: it learns, every parameter moves, the update is the whole batch's gradient, the
logged metrics add up."""
import json

import pytest
import torch
from helpers import count_calls, make_trainer, tiny_hf_model, use_row_keys

import model_io.static_decode
from grpo.rewards import RewardSet
from grpo.trainer import warmup_cosine
from model_io.convert import from_hf_model
from model_io.sampler import decode_mode


def test_loop_learns_a_synthetic_reward(tmp_path):
    """Reward = fraction of completion tokens that are lowercase letters: chance is ~26/259 = 0.1."""
    tr = make_trainer(tmp_path, steps=60, lr=1e-2)
    first = tr.train_step()["reward"]
    rewards = [first]
    while tr.step < 60 and rewards[-1] < 0.85:
        rewards.append(tr.train_step()["reward"])
    assert first < 0.3, first
    assert max(rewards[-3:]) > 0.8, rewards  # sign, masking and advantage errors all break this


def test_every_parameter_changes_after_one_step(tmp_path):
    tr = make_trainer(tmp_path, beta=0.04)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    m = tr.train_step()
    assert m["frac_reward_zero_std"] < 1.0
    for n, p in tr.model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"
    assert set(m) >= {"reward", "reward_std", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "grad_norm",
                      "learning_rate", "completions/mean_length", "completions/clipped_ratio", "tokens_per_sec", "step_time",
                      "rewards/letters/mean", "frac_reward_zero_std"}
    parts = [m["time/rollout"], m["time/logprobs"], m["time/update"]]  # where the step's time went
    assert all(t > 0 for t in parts) and abs(sum(parts) - m["step_time"]) < 1e-9
    # the rate is of the step's whole time: every completion token sampled in it over its seconds
    assert m["tokens_per_sec"] * m["step_time"] == pytest.approx(m["rollout/generated_tokens"], rel=1e-9)


def test_reward_metrics_by_hand():
    """reward_std is TRL's: the mean over groups of each group's (unbiased) std, the spread GRPO learns from; the
    std of the whole batch called groups of different but equal rewards a spread."""
    from grpo.distributed import Dist
    from grpo.metrics import step_metrics
    from grpo.rollout import Rollout

    def metrics(rewards):  # [B, G]
        B, G = rewards.shape
        mask = torch.ones(B * G, 3, dtype=torch.bool)
        ro = Rollout([], [], torch.zeros(B * G, 3, dtype=torch.long), torch.zeros(B * G, 3), mask, ["eos"] * (B * G), [""] * (B * G),
                     rewards, {}, torch.zeros(B, G), 0)
        agg = dict(loss=0.0, clip_low=0.0, clip_high=0.0, ratio=0.0, kl=0.0, entropy=0.0, tokens=0)
        return step_metrics(ro, rewards, agg, Dist(), torch.device("cpu"), 1)

    m = metrics(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))  # two flat groups: nothing to learn from
    assert (m["reward"], m["reward_std"], m["frac_reward_zero_std"]) == (1.0, 0.0, 1.0)
    m = metrics(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))  # group stds sqrt(1/2) and 0
    assert m["reward"] == 0.75 and m["reward_std"] == pytest.approx(0.5 ** 0.5 / 2) and m["frac_reward_zero_std"] == 0.5


def test_step_and_rollout_token_metrics_by_hand():
    """Completion lengths, truncation (finish "length" only: "eos" and "stop" both finished) and the loss's
    per-token means, worked by hand; the tree rollouts' tokens saved are trajectory minus searched tokens."""
    from data import Problem
    from grpo.distributed import Dist
    from grpo.metrics import rollout_token_metrics, sample_rows, step_metrics
    from grpo.rollout import Rollout
    from grpo.tree_rollout import TreeStats

    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)  # lengths 3, 1, 2, 2
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    ro = Rollout([Problem("q0", "1", "", 0), Problem("q1", "2", "", 1)], [[5], [6]], torch.zeros(4, 3, dtype=torch.long),
                 torch.zeros(4, 3), mask, ["eos", "length", "stop", "length"],
                 ["a", "b", "c", "d"], rewards, {"fmt": rewards.clone()}, torch.zeros(2, 2), 0)
    agg = dict(loss=2.0, clip_low=1.0, clip_high=3.0, ratio=8.0, kl=0.4, entropy=4.0, tokens=8)
    m = step_metrics(ro, rewards, agg, Dist(), torch.device("cpu"), 2)
    assert (m["completions/mean_length"], m["completions/min_length"], m["completions/max_length"]) == (2.0, 1.0, 3.0)
    assert m["completions/tokens"] == 8.0 and m["completions/clipped_ratio"] == 0.5  # 2 of 4 cut
    assert m["loss"] == 1.0  # 2 / (mu 2 x world 1)
    # per token of the 8: clipped low 1, high 3, ratio sum 8, entropy sum 4, kl sum 0.4
    assert (m["clip_ratio/low_mean"], m["clip_ratio/high_mean"], m["ratio_mean"], m["entropy"]) == (0.125, 0.375, 1.0, 0.5)
    assert m["kl"] == pytest.approx(0.05)
    # rewards [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.5625 + 3 x 0.0625) / 3) = 0.5
    assert m["rewards/fmt/mean"] == 0.25 and m["rewards/fmt/std"] == pytest.approx(0.5)
    assert len(sample_rows(ro, 10)) == 4  # --log-samples above the step's completions: all of them
    m = rollout_token_metrics(10, TreeStats(groups=2, generated_tokens=100, trajectory_tokens=160), True, Dist(), torch.device("cpu"))
    assert m == {"rollout/generated_tokens": 110.0, "rollout/tree_groups": 2.0, "rollout/tree_generated_tokens_per_group": 50.0,
                 "rollout/tree_tokens_saved_per_group": 30.0}  # (160 - 100) / 2
    assert rollout_token_metrics(10, None, False, Dist(), torch.device("cpu")) == {"rollout/generated_tokens": 10.0}


def test_kl_is_logged_only_where_it_is_measured(tmp_path):
    """With beta = 0 there is no reference model and no KL: a logged 0 read as a policy that never left the
    reference (README: `kl` with --beta > 0). With beta > 0 it is logged, and positive once the policy moved."""
    tr = make_trainer(tmp_path / "b0", beta=0.0, steps=2)
    tr.train()
    logged = [json.loads(l) for l in (tmp_path / "b0" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all("kl" not in m and "entropy" in m for m in logged), logged
    # the run's count of sampled tokens: each step's added to those before
    assert logged[1]["rollout/generated_tokens_total"] == logged[0]["rollout/generated_tokens"] + logged[1]["rollout/generated_tokens"]
    tr = make_trainer(tmp_path / "b1", beta=0.04)
    assert tr.train_step()["kl"] == 0.0 and tr.train_step()["kl"] > 0  # step 1: the policy is the reference


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_weights_are_made_once_a_step_and_gone_before_the_loss(tmp_path, monkeypatch, precision):
    """CPU packed weight copies (model_io/linear.py): the sampler packs each policy weight once, the recomputed old
    log-probs take the plain matmuls of the training pass, and no copy is left when the loss and its backward run
    (a copy per weight would sit beside the activations). The reference model packs nothing."""
    import grpo.trainer
    import model_io.linear
    from model_io.linear import Linear

    tr = make_trainer(tmp_path, beta=0.04, old_logprobs="recompute", precision=precision)
    linears = [m for m in tr.model.modules() if isinstance(m, Linear)]
    packs, left_at_loss = [], []
    real_pack, real_loss = Linear.packed_weight, grpo.trainer.policy_loss

    def counting_pack(self, dtype=torch.float32):
        before = self._packed
        out = real_pack(self, dtype)
        if self._packed is not before:
            packs.append(self)
        return out

    def watching_loss(*a, **kw):
        left_at_loss.append(sum(m._packed is not None for m in linears))
        return real_loss(*a, **kw)

    monkeypatch.setattr(Linear, "packed_weight", counting_pack)
    monkeypatch.setattr(grpo.trainer, "policy_loss", watching_loss)
    # a CPU that cannot pack bf16 (model_io.linear.BF16_PACKED) runs bf16 plainly: only the float32 LM head packs
    want = linears if precision == "fp32" or model_io.linear.BF16_PACKED else [tr.model.lm_head]
    for _ in range(2):
        packs.clear()
        tr.train_step()
        assert len(packs) == len(want) and set(map(id, packs)) == set(map(id, want))
    assert left_at_loss and set(left_at_loss) == {0}


def test_with_mu_passes_each_update_is_judged_alone_and_grad_norm_is_their_mean(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, mu=3)
    seen, clip_and_step = [], tr._clip_and_step

    def recording(loss):
        seen.append((loss, clip_and_step(loss)))
        return seen[-1][1]

    monkeypatch.setattr(tr, "_clip_and_step", recording)
    m = tr.train_step()
    assert len(seen) == 3 and len({norm for _, norm in seen}) == 3  # the weights moved between the passes
    assert m["grad_norm"] == pytest.approx(sum(norm for _, norm in seen) / 3)
    # each pass's own loss decides whether that update is taken (a sum over passes would carry one NaN forward)
    assert m["loss"] == pytest.approx(sum(loss for loss, _ in seen) / 3)
    assert len({loss for loss, _ in seen}) == 3


def test_step_indices_cover_an_epoch_once(tmp_path):
    tr = make_trainer(tmp_path)
    seen = [i for s in range(4) for i in tr.step_indices(s)]  # 16 problems, 4 per step
    assert sorted(seen) == list(range(16))


def test_the_prompts_worked_examples_are_not_trained_on(tmp_path):
    """Their answers are in every prompt: asking them would reward copying (eval leaves them out too)."""
    tr = make_trainer(tmp_path, shots=2)
    asked = {tr.train_set[i].question for s in range(7) for i in tr.step_indices(s)}  # 14 problems, 4 per step
    assert [p.question for p in tr.shots] == ["question 0", "question 1"]
    assert asked == {f"question {i}" for i in range(2, 16)}
    with pytest.raises(ValueError, match="no training questions left.*lower --shots"):
        make_trainer(tmp_path, shots=16)


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_step_with_nothing_to_run_still_steps_adamw(tmp_path, max_grad_norm):
    """beta = 0 skips zero-advantage rows (departure 6). When a step skips every row, the update must still be the
    one the full computation gives: AdamW on zero gradients, moving the weights by its momentum (no crash on
    gradients that were never created, with or without clipping)."""
    calls = []

    def first_step_only(completions, completion_ids, **_):  # step 1: a learning signal; step 2: every reward 0
        calls.append(1)
        return [float(len(calls) == 1 and i % 2) for i in range(len(completions))]

    rs = RewardSet({"r": 1.0}, {"r": first_step_only})
    import copy

    tr = make_trainer(tmp_path, steps=2, rewards=rs, max_grad_norm=max_grad_norm)
    tr.train_step()
    before = [p.detach().clone() for p in tr.model.parameters()]
    # the update the full computation gives: AdamW, in its state after step 1, on gradients of exactly 0
    shadow = [p.detach().clone().requires_grad_(True) for p in tr.params]
    adamw = torch.optim.AdamW(shadow, lr=tr.cfg.lr, betas=(tr.cfg.adam_beta1, tr.cfg.adam_beta2), weight_decay=tr.cfg.weight_decay,
                              eps=1e-8, fused=True)
    adamw.load_state_dict(copy.deepcopy(tr.opt.state_dict()))  # (a copy: loaded as is, the two would share the state)
    for p in shadow:
        p.grad = torch.zeros_like(p)
    adamw.step()
    m = tr.train_step()
    assert m["frac_reward_zero_std"] == 1.0 and "entropy" not in m  # no row ran: no token statistics
    moved = max((p - b).abs().max().item() for p, b in zip(tr.model.parameters(), before))
    assert moved > 1e-4  # Adam's momentum from step 1 (lr 3e-3)
    assert all(int(st["step"]) == 2 for st in tr.opt.state.values())
    assert all(torch.equal(p, q) for p, q in zip(tr.params, shadow))


@pytest.mark.parametrize("rollouts", ["plain", "mcts"])
def test_the_gpu_recipe_rehearsed_on_cpu(tmp_path, monkeypatch, rollouts):
    """What a CUDA run does differently, here on a CPU: bf16 autocast over float32 master weights (rollouts,
    reference and policy passes), the static decode path, counter-based RowKeys for per-row randomness, old
    log-probs recomputed. Until a GPU runs the suite this is the only place that combination runs (a float32
    cache under autocast broke the static path's cache write once)."""
    use_row_keys(monkeypatch)
    static = count_calls(monkeypatch, model_io.static_decode, "decode_static")
    with decode_mode("static"):
        extra = dict(rollouts="mcts", mcts_prob=0.5, mcts_step="tokens:2", mcts_children=2) if rollouts == "mcts" else {}
        tr = make_trainer(tmp_path, beta=0.04, precision="bf16", **extra)  # (on a CPU: autocast "cpu")
        assert tr.recompute_old  # --old-logprobs auto recomputes them in bf16
        before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        ms = [tr.train_step() for _ in range(2)]
    assert static  # the rollouts took the static decode path (a CPU's default is the dynamic one)
    for m in ms:
        assert all(v == v and abs(v) != float("inf") for v in m.values() if isinstance(v, float)), m
    assert ms[0]["frac_reward_zero_std"] < 1.0
    if rollouts == "mcts":
        assert sum(m["rollout/tree_groups"] for m in ms) > 0  # tree search ran under autocast too
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay float32
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())


def test_compiled_decoding_trains_like_the_eager_static_step(tmp_path):
    """--decode compiled in training: the compiled step reads the weights each optimizer step leaves (they are
    inputs of the compiled graph, not constants baked in), so rollouts and updates match the eager static path."""
    runs = {}
    for mode in ("static", "compiled"):
        with decode_mode(mode):
            tr = make_trainer(tmp_path / mode, beta=0.04, steps=3)
            runs[mode] = ([tr.train_step()["reward"] for _ in range(3)], tr.model)
    assert runs["static"][0] == runs["compiled"][0]  # the same completions' rewards, step after step
    assert getattr(runs["compiled"][1], "_compiled_step", None) is not None
    init = from_hf_model(tiny_hf_model("llama", seed=0))
    moved = max((a - c).abs().max() for a, c in zip(runs["static"][1].parameters(), init.parameters()))
    apart = max((a - b).abs().max() for a, b in zip(runs["static"][1].parameters(), runs["compiled"][1].parameters()))
    # float rounding of the sampler's log-probs (old log-probs), amplified by Adam, not a different trajectory:
    # measured 5.7e-5 apart after updates of 6e-3
    assert apart < 0.05 * moved, (apart, moved)


def test_learning_rate_schedule_by_hand():
    # warm-up 2 of 6 steps: steps 0, 1 at 1/3, 2/3 of the peak (none at 0), then cosine over the 4 steps left,
    # 0.5 * (1 + cos(pi * progress)) with progress 0, 1/4, 1/2, 3/4; 0 once all 6 are done
    f = warmup_cosine(2, 6)
    expected = [1 / 3, 2 / 3, 1.0, 0.8535534, 0.5, 0.1464466, 0.0]
    assert [f(s) for s in range(7)] == pytest.approx(expected, abs=1e-7)
    assert warmup_cosine(0, 4)(0) == 1.0  # no warm-up: the first step at the peak


@pytest.mark.parametrize("fp32_ref", [False, True])
def test_bf16_recomputed_old_logprobs_give_ratio_exactly_one(tmp_path, fp32_ref):
    """Departure 1: in bf16 the old log-probs are recomputed so that, with mu = 1, the ratio is exactly 1. They must
    come from the kernels of the training pass: under no_grad a CPU Linear would take its oneDNN-packed matmul,
    which rounds differently from the plain one autograd runs (ratio_mean 0.9986 on the embedded model)."""
    # SmolLM2-135M's width, and 8 rows x 64 tokens in a micro-batch: the packed and plain bf16 kernels round alike
    # for most shapes, and differ at this one (M = 512 rows into the 576-wide projections)
    wide = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=1,
                initializer_range=0.02)
    tr = make_trainer(tmp_path, beta=0.04 if fp32_ref else 0.0, precision="bf16", mu=1, steps=2, model_kw=wide,
                      prompts_per_step=2, group_size=4, max_new_tokens=64, micro_batch=8)
    assert tr.recompute_old
    # and structurally, whatever this CPU's kernels do (a review: on a CPU whose packed and plain bf16 kernels round
    # alike at this shape, or that packs no bf16, the ratio alone passed with the recompute taking packed matmuls):
    # in the policy's teacher-forced pass no Linear may take its packed copy
    import grpo.trainer as T
    from model_io.linear import Linear

    allowed, inside, real_tf, real_fwd = [], [], T.teacher_forced_logprobs, Linear.forward

    def teacher_forced(model, *a, **k):
        inside.append(model is tr.model)
        try:
            return real_tf(model, *a, **k)
        finally:
            inside.pop()

    def forward(self, x):
        if inside and inside[-1]:
            allowed.append(self.allow_packed)
        return real_fwd(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "teacher_forced_logprobs", teacher_forced)
        mp.setattr(Linear, "forward", forward)
        for _ in range(2):
            m = tr.train_step()
            assert m["ratio_mean"] == 1.0 and m["clip_ratio/low_mean"] == 0.0 and m["clip_ratio/high_mean"] == 0.0, m
    assert allowed and not any(allowed)  # the recompute's Linears ran, every one on the plain matmul


def test_gradients_are_freed_once_the_update_is_made(tmp_path):
    """A gradient is one more copy of the weights: kept after the update it sat in memory through the next
    sampling (the smoke run's sampling peak fell by 630 MB of 5.1 GB when it went)."""
    tr = make_trainer(tmp_path, beta=0.04, mu=2)
    before = [p.detach().clone() for p in tr.params]
    m = tr.train_step()
    assert m["grad_norm"] > 0 and not all(torch.equal(a, b) for a, b in zip(before, tr.params))
    assert all(p.grad is None for p in tr.params)


def test_profile_step_writes_that_steps_profile_and_changes_nothing_else(tmp_path):
    """--profile-step 2: step 2 runs under torch.profiler; its report names the step's three phases with their
    times, the tables hold the model's operations, the Chrome trace is written, and the weights come out exactly as
    an unprofiled run's (the profiler records; it computes nothing)."""
    import gzip
    import json

    plain = make_trainer(tmp_path / "plain", steps=2)
    plain.train()
    prof = make_trainer(tmp_path / "prof", steps=2, profile_step=2)
    prof.train()
    files = sorted(p.name for p in (tmp_path / "prof" / "profile").iterdir())
    assert files == ["step_2.trace.json.gz", "step_2.txt"]
    assert not (tmp_path / "plain" / "profile").exists()
    text = (tmp_path / "prof" / "profile" / "step_2.txt").read_text()
    first = text.splitlines()[0]
    assert first.startswith("training step 2: ") and all(f"{p} " in first for p in ("rollout", "logprobs", "update"))
    assert "by host time (self):" in text and "aten::mm" in text and "device busy" not in text  # (no GPU here)
    trace = json.loads(gzip.decompress((tmp_path / "prof" / "profile" / "step_2.trace.json.gz").read_bytes()))
    assert any(e.get("name") == "grpo/update" for e in trace["traceEvents"])
    for a, b in zip(plain.model.parameters(), prof.model.parameters()):
        assert torch.equal(a, b)


def test_a_run_past_its_profile_step_says_so(tmp_path, capsys):
    t = make_trainer(tmp_path / "run", steps=2, profile_step=1)
    t.step = 1  # as a run resumed from its step-1 checkpoint
    t.train()
    assert "--profile-step 1: this run is past step 1 already (resumed at step 1)" in capsys.readouterr().out
    assert not (tmp_path / "run" / "profile").exists()


def test_the_profiler_starts_once_before_the_runs_first_cuda_graph(tmp_path, monkeypatch):
    """With --profile-step, the profiler is started and stopped once before anything else runs (the starting
    evaluation's decoding makes CUDA graphs on a GPU: a graph made before the profiler's first start hung or
    faulted when replayed under it, pytorch#75504); without it, never."""
    import grpo.trainer as T

    for profile_step, expected in ((2, ["prepare", "evaluate"]), (0, ["evaluate"])):
        seen = []
        monkeypatch.setattr(T, "prepare_profiler", lambda device: seen.append("prepare"))
        t = make_trainer(tmp_path / f"run{profile_step}", steps=2, profile_step=profile_step, eval_every=2, eval_limit=1)
        monkeypatch.setattr(t, "evaluate", lambda: seen.append("evaluate") or {})
        monkeypatch.setattr(t, "train_step", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            t.train()
        assert seen == expected


def test_a_non_finite_metric_is_null_in_metrics_jsonl_and_the_summaries_read_it(tmp_path):
    """json.dumps wrote a skipped update's loss as a bare NaN, which is not JSON: strict readers (jq) refused the
    file (a CLI audit). It is null there now, and the scripts that read the file average around it."""
    import importlib.util
    import json

    from conftest import ROOT

    from grpo.metrics import RunLog

    log = RunLog(tmp_path)
    log.log(1, {"loss": float("nan"), "reward": 0.5, "grad_norm": float("inf")})
    log.log(2, {"loss": 0.25, "reward": float("nan")})
    log.close()

    def strict(text):
        raise ValueError(f"not JSON: {text}")

    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": None, "reward": 0.5, "grad_norm": None}, {"step": 2, "loss": 0.25, "reward": None}]
    for name in ("plot_runs", "gpu_summary"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.mean([r["reward"] for r in rows]) == 0.5


def test_each_step_logs_the_learning_rate_it_took(tmp_path):
    """warmup_cosine over the run's own --warmup-steps and --steps, the scheduler stepped once per step: with 2 of 4
    steps warming up, steps 1-4 take lr x 1/3, 2/3, then the cosine from the peak, x 1 and x 0.5 (progress 0, 1/2)."""
    tr = make_trainer(tmp_path, steps=4, warmup_steps=2, lr=0.03, prompts_per_step=2, group_size=2, max_new_tokens=2)
    assert [tr.train_step()["learning_rate"] for _ in range(4)] == pytest.approx([0.01, 0.02, 0.03, 0.015], rel=1e-12)


def _half_flat_rewards():
    """Letters (helpers.letter_fraction) for problems whose answer is "1", 0 for the rest: half the groups flat."""
    from helpers import letter_fraction, tiny_tokenizer

    letters = letter_fraction(tiny_tokenizer())

    def half_flat(completions, answers, completion_ids, **_):
        return [x if a == "1" else 0.0 for x, a in zip(letters(completions, completion_ids), answers)]

    return RewardSet({"half": 1.0}, {"half": half_flat})


@pytest.mark.parametrize("agg,beta,tree", [("seq-mean-token-mean", 0.04, False), ("token-mean", 0.0, False),
                                           ("seq-mean-token-sum-norm", 0.0, False), ("seq-mean-token-mean", 0.0, True)])
def test_the_micro_batched_update_is_the_whole_batchs_gradient(tmp_path, monkeypatch, agg, beta, tree):
    """Micro-batches of 5 rows (the last one short), gradients summed over them with the whole batch's normalisers,
    zero-advantage rows skipped where beta = 0 (departure 6) and run where beta > 0 (their KL term has a gradient):
    AdamW steps on the gradient of the whole batch's loss in one pass (grpo.loss.policy_loss over every row), with
    beta > 0 at the second step, where the policy has left the reference. The logged loss, entropy and ratio are that
    pass's, the entropy over the rows that ran. --max-grad-norm 0: the gradient is not clipped. With tree rollouts and
    per-token advantages (--tree-advantage step) a row is skipped only where all of its tokens' advantages are 0."""
    import copy

    import grpo.trainer as T
    from data import Problem
    from grpo.loss import policy_loss
    from grpo.rollout import completion_logprobs

    problems = [Problem(f"question {i}", str(i % 2), "", i) for i in range(16)]
    kw = dict(rollouts="mcts", mcts_step="tokens:2", mcts_children=2, tree_advantage="step") if tree else {}
    tr = make_trainer(tmp_path, beta=beta, loss_agg=agg, micro_batch=5, max_grad_norm=0.0, problems=problems,
                      rewards=_half_flat_rewards(), group_size=4, seed=1, **kw)
    rollouts, grads, real_merge = [], [], T.merge
    monkeypatch.setattr(T, "merge", lambda parts, pad: rollouts.append(real_merge(parts, pad)) or rollouts[-1])
    tr.opt.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in tr.params]))
    if beta:
        tr.train_step()  # step 1: the policy leaves the reference
    before = copy.deepcopy(tr.model)
    m = tr.train_step()
    ro, cfg = rollouts[-1], tr.cfg
    adv = ro.advantages.flatten() if not tree else ro.token_advantages
    nonzero = (adv != 0) if not tree else (adv != 0).any(-1)
    assert nonzero.any() and not nonzero.all()  # flat groups and groups with a spread
    if tree:  # and rows with a step of no advantage (V(node) = V(parent)) among steps with one: such a row runs
        assert (nonzero & ((adv == 0) & ro.mask).any(-1)).any()

    T_ = int(ro.mask.sum(-1).max())
    rows, pad = torch.arange(len(nonzero)), tr.tok.pad_token_id
    logp, ent = completion_logprobs(before, ro, rows, T_, pad, cfg.logprob_chunk)
    with torch.no_grad():
        ref = completion_logprobs(tr.ref, ro, rows, T_, pad, cfg.logprob_chunk, with_entropy=False) if beta else None
    mask = ro.mask[:, :T_]
    loss, st = policy_loss(logp, ro.old_logp[:, :T_], ref, adv if not tree else adv[:, :T_], mask, eps_low=cfg.eps_low,
                           eps_high=cfg.eps_high, beta=beta, agg=agg, max_len=cfg.max_new_tokens)
    loss.backward()
    want = [p.grad if p.grad is not None else torch.zeros_like(p) for p in before.parameters() if p.requires_grad]
    assert len(grads) == 1 + bool(beta) and len(grads[-1]) == len(want)
    for g, w in zip(grads[-1], want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()) + 1e-12)
    assert m["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert m["grad_norm"] == pytest.approx(float(torch.linalg.vector_norm(torch.stack([w.norm() for w in want]))), rel=1e-4)
    ran = mask if beta else mask & nonzero[:, None]  # beta = 0: the statistics of the rows that ran
    assert m["entropy"] == pytest.approx(float((ent * ran).sum() / ran.sum()), rel=1e-5)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # mu = 1: the sampling policy's weights
    if beta:
        assert m["kl"] == pytest.approx(st.kl, rel=1e-4) and m["kl"] > 0


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_adamw_steps_on_the_gradient_clipped_to_max_grad_norm(tmp_path, max_grad_norm):
    """grad_norm logs the norm before clipping; the update takes the gradient scaled down to --max-grad-norm (0: as is)."""
    tr = make_trainer(tmp_path, max_grad_norm=max_grad_norm)
    seen = []
    tr.opt.register_step_pre_hook(lambda *_: seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.params])))))
    m = tr.train_step()
    assert m["grad_norm"] > 1e-2
    assert seen == [pytest.approx(max_grad_norm or m["grad_norm"], rel=1e-4)]


@pytest.mark.parametrize("old,precision,recomputed", [("recompute", "fp32", True), ("auto", "fp32", False),
                                                      ("sampler", "bf16", False)])
def test_old_logprobs_are_recomputed_where_asked(tmp_path, monkeypatch, old, precision, recomputed):
    """--old-logprobs recompute: one teacher-forced pass of the policy before the update; sampler, or auto in float32:
    none (the sampler's). (auto in bf16: test_bf16_recomputed_old_logprobs_give_ratio_exactly_one.)"""
    import grpo.trainer as T

    tr = make_trainer(tmp_path, old_logprobs=old, precision=precision, prompts_per_step=2, group_size=2, max_new_tokens=2)
    calls = count_calls(monkeypatch, T, "teacher_forced_logprobs")
    tr.train_step()
    assert [a[0] is tr.model for a in calls] == ([True] if recomputed else [])


def test_a_tree_steps_sampled_tokens_are_its_searches_not_its_trajectories(tmp_path):
    """--mcts-prob 1: every group from a tree search, whose rollouts share their prefixes: the tokens sampled are
    those the searches generated, not the G trajectories' lengths summed (which count a shared prefix each time)."""
    tr = make_trainer(tmp_path, rollouts="mcts", mcts_prob=1.0, mcts_step="tokens:2", mcts_children=2, prompts_per_step=2,
                      group_size=4)
    m = tr.train_step()
    assert m["rollout/tree_groups"] == 2.0
    assert m["rollout/generated_tokens"] == m["rollout/tree_groups"] * m["rollout/tree_generated_tokens_per_group"]


def test_the_trainer_refuses_bf16_weights(tmp_path):
    """bf16 weights round an update of lr ~1e-6 away (an API review: 206 of 94,912 parameters moved in a step,
    87,616 in float32), silently; bf16 training is autocast over float32 weights (TrainConfig.precision)."""
    with pytest.raises(ValueError, match=r"^the Trainer trains float32 master weights, not torch.bfloat16: load the model "
                                         r"with dtype=torch.float32"):
        make_trainer(tmp_path, dtype=torch.bfloat16)
