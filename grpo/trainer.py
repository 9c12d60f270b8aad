"""The GRPO trainer. One step reads top to bottom: rollout -> reward -> advantage -> loss -> step -> log.

GRPO is DeepSeekMath's Group Relative Policy Optimization (Shao et al. 2024, arXiv 2402.03300, eq. 3): for each
prompt, G completions are sampled; each one's advantage is its reward relative to its group; the policy
maximises the clipped surrogate of PPO with those advantages, minus beta times a KL estimate to a frozen
reference. Departures from the paper's eq. 3, all deliberate:

 1. Old log-probs come from the sampler in float32 (`--old-logprobs auto`): they are the log-probs of the
    policy that sampled, computed while sampling at temperature 1, so they cost no extra forward pass. With
    mu = 1 the ratio is then 1 up to float32 rounding between the sampling and training kernels (the paper's
    pi_theta_old is the same weights). In bf16 (`--precision`: a GPU, an AMX CPU), where sampling and training
    kernels round differently, `auto` recomputes them with one teacher-forced pass through the training pass's
    own kernels (on a CPU: not the packed matmuls the sampler uses), so that at mu = 1 the ratio is exactly 1.
 2. Sampling temperature and nucleus mass (`--top-p`) are knobs (default 1.0 each); log-probs in the loss, the old
    ones included, are always of the whole distribution at temperature 1, not of the tempered, truncated one
    that sampled (with either knob off 1.0 the completions are not samples of pi_old, as eq. 3 assumes).
 3. The clip range can be asymmetric (eps_low, eps_high: DAPO's clip-higher, Yu et al. 2025).
 4. Aggregation over tokens is selectable (`--loss-agg`): the paper's per-sequence mean then mean over
    sequences (default), DAPO's token mean, or Dr. GRPO's constant-length normaliser (Liu et al. 2025).
 5. Advantage scaling is selectable (`--adv-scale`): group std (paper), batch std, or none (Dr. GRPO).
    std is the unbiased sample std plus eps = 1e-4; groups of equal rewards get exactly zero advantage.
 6. With beta = 0 the reference model is not built, and completions with zero advantage are not run through
    forward/backward: their loss and gradient are exactly zero (they still count in the normalisers, and AdamW
    steps on zero gradients as it would have). Token statistics (entropy, KL, clip fractions) are then over the
    rows that ran.
 7. Outcome supervision (unless 11): the reward is given per completion (the paper's sec. 4.1.2), from the five
    rule-based GSM8K rewards of the well-known recipe (grpo/rewards.py, with its departures listed there: two so
    that the format rewards can be earned at all (multi-line reasoning, a completion stopped at `</answer>`),
    three in what counts as an answer), not from a reward model.
 8. The KL term is in the loss (as in the paper), estimated per token with k3 (its eq. 4).
 9. Multi-process: each rank samples its own prompts; gradients are summed over micro-batches with whole-batch
    normalisers, then averaged over ranks with one all-reduce (what DDP does, without overlapping the
    communication with backward), so N processes take the same step as one process with the same global batch.
10. Precision: the policy's weights and optimizer state are float32; with `--precision bf16` (auto: on a GPU or a
    CPU with AMX-BF16) the forward passes run under bf16 autocast except the LM head, which runs in float32
    (MiniMax-M1, arXiv 2506.13585, sec. 3.2: bf16 logits put the sampler's and the trainer's token
    probabilities apart); log-probs, the loss and the KL are float32. The frozen reference stores its linear
    weights in bf16, the values autocast would cast them to at every call.
11. With `--rollouts mcts` a prompt's group is G distinct rollouts of a tree search (finished ones first, then
    those cut off by the token limit, repeated in turn if fewer than G) instead of G independent samples
    (grpo/tree_rollout.py), and `--tree-advantage step|mix` gives per-token advantages from the tree
    (V(node) - V(parent), TreeRL's local term alone, without its global term and 1/sqrt(leaves) weight) in
    place of eq. 3's one advantage per completion.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from data import Problem, StopOnText, encode_prompts, stop_token_ids
from model_io import SamplingConfig, Transformer, export_hf
from model_io.checkpoint import weights_fingerprint
from model_io.linear import drop_packed, set_packed, unpacked
from model_io.precision import check_master_weights, mixed_precision, resolve_precision, store_frozen_linears_in

from . import distributed as D, limits
from .batches import EpochOrder, split_shots
from .checkpointing import checkpoint_dirs, data_fingerprint, load_checkpoint, refuse_other_anchors, save_checkpoint
from .config import TrainConfig
from .evaluate import EvalConfig, evaluate
from .loss import group_advantages, policy_loss
from .metrics import RunLog, rollout_token_metrics, sample_rows, step_metrics, truncate_log
from .profiling import phase, profiled, prepare as prepare_profiler
from .rewards import RewardSet
from .rollout import Rollout, collect, completion_logprobs, row_generators, teacher_forced_logprobs
from .tree_rollout import collect_tree, merge, search_config as tree_search_config, use_tree, with_batch_std


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


class Trainer:
    def __init__(self, cfg: TrainConfig, model: Transformer, tokenizer, train: list[Problem], test: list[Problem],
                 run_dir: Path, rewards: RewardSet | None = None, dist: D.Dist = D.Dist(), progress: bool = True):
        self.cfg, self.model, self.tok = cfg, model, tokenizer
        check_master_weights(model)
        self.shots, train = split_shots(train, cfg.shots, cfg.prompts_per_step)
        self.train_set, self.test_set = train, test
        self.run_dir, self.dist, self.progress = run_dir, dist, progress
        self.rewards = rewards or RewardSet.parse(cfg.rewards)
        if cfg.deterministic and model.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)  # process-wide: exact resume needs it
            # ...but not its NaN-filling of every torch.empty (47k fills, ~0.25 s a step): our KV caches are
            # allocated uninitialised on purpose and every slot read is written first (tests/test_sampler.py)
            torch.utils.deterministic.fill_uninitialized_memory = False
        # bf16 autocast over float32 master weights where bf16 matmuls are fast (GPU, AMX CPU), else float32
        self.precision = resolve_precision(cfg.precision, model.device)
        self.autocast = mixed_precision(self.precision, model.device)
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta > 0 else None
        # the KL term's anchor: a resume rebuilds the reference from --model and checks it against this record
        self.ref_fingerprint = weights_fingerprint(model) if self.ref is not None else None
        # ...and the data: --gsm8k may change on resume (the same files elsewhere), but not to other problems
        self.data_fingerprint = data_fingerprint(self.shots + train)
        if self.ref is not None:
            set_packed(self.ref, False)  # teacher-forced passes only: not worth a second copy of its weights
            store_frozen_linears_in(self.ref, self.precision)  # bf16: what autocast would cast them to, once
        self.params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
        # fused: one kernel per step instead of a dozen passes over every weight (on this CPU the unfused step of a
        # 135M model took ~1 s of a 12 s GRPO step); the same update, elementwise
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     weight_decay=cfg.weight_decay, eps=1e-8, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_cosine(cfg.warmup_steps, cfg.steps))
        self.sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                       eos_ids=stop_token_ids(tokenizer, model.cfg.eos_token_ids))
        self.stop = StopOnText(tokenizer, [cfg.stop]) if cfg.stop else None
        self.search_cfg = tree_search_config(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.stop,
                                             cfg.mcts_simulations, cfg.mcts_children, cfg.mcts_c_puct, cfg.mcts_step, cfg.mcts_step_tokens,
                                             cfg.mcts_root)
        self.recompute_old = cfg.old_logprobs == "recompute" or (cfg.old_logprobs == "auto" and self.precision == "bf16")
        self.step, self.bad_steps = 0, 0
        self.generated_total = 0  # tokens sampled for rollouts so far, all processes
        self.flat_steps = 0  # consecutive steps in which no group had any reward spread (nothing to learn from)
        self._t_start, self._last_step_s = time.perf_counter(), 0.0  # the last training step's seconds
        self._prompt_cache: dict[int, list[int]] = {}
        self.order = EpochOrder(len(train), cfg.prompts_per_step, cfg.seed)
        self.log = RunLog(run_dir, enabled=dist.main)

    # ------------------------------------------------------------------ data
    def step_indices(self, step: int) -> list[int]:
        """This rank's prompts for `step`: the global batch (grpo.batches: per-epoch permutations, no problem twice
        in a batch), split contiguously across ranks."""
        return D.shard(self.order.step(step), self.dist)

    def prompts(self, idx: list[int]) -> list[list[int]]:
        missing = [i for i in idx if i not in self._prompt_cache]
        for i, ids in zip(missing, encode_prompts(self.tok, [self.train_set[i].question for i in missing], self.shots)):
            self._prompt_cache[i] = ids
        return [self._prompt_cache[i] for i in idx]

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        cfg, model, d = self.cfg, self.model, self.dist
        t0 = time.perf_counter()
        G = cfg.group_size
        idx = self.step_indices(self.step)

        # rollout -> reward -> advantage (plain samples, or a tree search per prompt: grpo/tree_rollout.py)
        with phase("grpo/rollout"):
            model.eval()
            on_tree = [cfg.rollouts == "mcts" and use_tree(cfg.seed, self.step, i, cfg.mcts_prob) for i in idx]
            plain_idx = [i for i, t in zip(idx, on_tree) if not t]
            tree_idx = [i for i, t in zip(idx, on_tree) if t]
            parts, tree_stats = [], None
            with self.autocast():
                if plain_idx:
                    gens = row_generators(cfg.seed, self.step, plain_idx, G, model.device)
                    parts.append(collect(model, self.tok, [self.train_set[i] for i in plain_idx], self.prompts(plain_idx), G,
                                         self.sampling, self.rewards, gens, self.stop, cfg.adv_scale))
                if tree_idx:
                    ro_t, tree_stats = collect_tree(model, self.tok, [self.train_set[i] for i in tree_idx],
                                                    self.prompts(tree_idx), tree_idx, G, self.search_cfg, self.rewards,
                                                    cfg.seed, self.step, cfg.tree_advantage, cfg.tree_advantage_weight, cfg.adv_scale)
                    parts.append(ro_t)
            ro = merge(parts, self.tok.pad_token_id)
            idx = plain_idx + tree_idx  # the rollout's prompt order
            rewards_all = D.gather_cat(ro.rewards.to(model.device), d).cpu()  # [B, G] over all ranks
            if cfg.adv_scale == "batch" and (d.on or len(parts) > 1):  # the batch std is over the whole global batch
                with_batch_std(ro, group_advantages(rewards_all, "batch")[d.rank * len(idx) : (d.rank + 1) * len(idx)],
                               len(plain_idx), cfg.tree_advantage)
        t_rollout = time.perf_counter() - t0

        with phase("grpo/logprobs"):
            # whole-batch normalisers, divided by the world size because gradients are averaged over ranks
            n_tokens = float(D.all_reduce_sum(ro.mask.sum().to(model.device, torch.float64), d)) / d.world
            n_seqs = float(cfg.prompts_per_step * G) / d.world
            adv = ro.advantages.flatten()  # [B*G]
            tok_adv = ro.token_advantages  # [B*G, T] with tree rollouts, else None
            rows_all = torch.arange(adv.numel())
            # departure 6: with beta = 0, zero-advantage rows have exactly zero loss and gradient: skip them
            nonzero = (adv != 0) if tok_adv is None else (tok_adv != 0).any(-1)
            rows_run = rows_all if cfg.beta > 0 else rows_all[nonzero]
            micro = [rows_run[i : i + cfg.micro_batch] for i in range(0, len(rows_run), cfg.micro_batch)]

            # the sampler's packed weight copies are freed, so that they do not sit beside the backward's activations; the
            # recomputed old log-probs take the plain matmuls of the training pass (departure 1: the packed ones round
            # differently, and the ratio would be 0.9975-0.9999 instead of 1 at mu = 1)
            drop_packed(model)
            if self.recompute_old:
                with unpacked(model):
                    old_logp = teacher_forced_logprobs(model, ro, micro, self.tok.pad_token_id, cfg.logprob_chunk, self.autocast)
            else:
                old_logp = ro.old_logp
            ref_logp = (teacher_forced_logprobs(self.ref, ro, micro, self.tok.pad_token_id, cfg.logprob_chunk, self.autocast)
                        if self.ref is not None else None)
            if model.device.type == "cuda":  # (once a step: the passes' kernels counted here, not in the update's time)
                torch.cuda.synchronize(model.device)
        t_logprobs = time.perf_counter() - t0 - t_rollout

        # loss -> step (mu passes over the same rollouts)
        with phase("grpo/update"):
            model.train()
            agg = dict(loss=0.0, clip_low=0.0, clip_high=0.0, ratio=0.0, kl=0.0, entropy=0.0, tokens=0)
            norms = []  # one per update: grad_norm logs their mean
            for _ in range(cfg.mu):
                self.opt.zero_grad(set_to_none=True)
                pass_loss = 0.0  # this update's alone: a skipped pass must not skip the next
                for rows in micro:
                    T = int(ro.mask[rows].sum(-1).max())
                    with self.autocast():
                        logp, ent = completion_logprobs(model, ro, rows, T, self.tok.pad_token_id, cfg.logprob_chunk)
                    dev = logp.device
                    loss, st = policy_loss(
                        logp, old_logp[rows, :T].to(dev), ref_logp[rows, :T].to(dev) if ref_logp is not None else None,
                        (tok_adv[rows, :T] if tok_adv is not None else adv[rows]).to(dev), ro.mask[rows, :T].to(dev),
                        eps_low=cfg.eps_low, eps_high=cfg.eps_high, beta=cfg.beta, agg=cfg.loss_agg, n_seqs=n_seqs,
                        n_tokens=n_tokens, max_len=cfg.max_new_tokens)
                    loss.backward()
                    m = ro.mask[rows, :T].to(dev)
                    pass_loss += float(loss.detach())
                    for k in ("clip_low", "clip_high", "ratio", "kl"):
                        agg[k] += getattr(st, k) * st.tokens
                    agg["entropy"] += float((ent * m).sum())
                    agg["tokens"] += st.tokens
                for p in self.params:  # rows skipped (departure 6) or a rank with none to run: their gradient is 0,
                    if p.grad is None:  # and AdamW must still take its step (momentum, decay, step count) as it would
                        p.grad = torch.zeros_like(p)
                D.average_gradients(self.params, d)
                agg["loss"] += pass_loss
                norms.append(self._clip_and_step(pass_loss))
        self.lr_used = self.opt.param_groups[0]["lr"]
        with warnings.catch_warnings():  # (the schedule follows the step count: torch's warning, after a skipped
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)  # first update, that
            self.sched.step()  # the schedule's first value was lost is wrong here: that step took it, as lr_used says)
        self.step += 1
        m = self._metrics(ro, rewards_all, agg, sum(norms) / len(norms), t0, t_rollout, t_logprobs)
        m.update(rollout_token_metrics(int(ro.lengths[: len(plain_idx) * G].sum()), tree_stats, cfg.rollouts == "mcts",
                                       d, model.device))
        self.generated_total += int(m["rollout/generated_tokens"])
        m["rollout/generated_tokens_total"] = float(self.generated_total)
        return m

    def _clip_and_step(self, loss: float) -> float:
        """`loss`: this rank's part of the update's loss. The gradient (and so its norm) is already averaged over the
        ranks; the loss is not, and a rank whose loss alone is non-finite must not skip an update the others take
        (the ranks' weights would part for good): every rank counts the ranks with a non-finite loss."""
        cfg = self.cfg
        if cfg.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))
        bad_loss = limits.on_any_rank(not math.isfinite(loss), self.dist, self.model.device)
        if not bad_loss and math.isfinite(norm):
            self.opt.step()
            # the gradients (one more copy of the weights) are freed now, not kept through the next sampling
            self.opt.zero_grad(set_to_none=True)
            # a packed copy made since sampling would be stale now, and the fused AdamW kernel updates in place
            # without moving the weights' version counters, by which it would be caught
            drop_packed(self.model)
            self.bad_steps = 0
            return norm
        self.opt.zero_grad(set_to_none=True)  # skip: the weights stay as they were
        self.bad_steps += 1
        # (the step being trained: self.step counts those done, and the logs number this one self.step + 1)
        tqdm.write(f"step {self.step + 1}: non-finite loss ({loss}) or gradient norm ({norm}); update skipped")
        if self.bad_steps >= cfg.max_bad_steps:
            raise limits.non_finite_error(cfg, self.bad_steps, self.step + 1, bool(checkpoint_dirs(self.run_dir)))
        return norm

    def _metrics(self, ro: Rollout, rewards_all, agg, grad_norm, t0, t_rollout, t_logprobs) -> dict[str, float]:
        m = step_metrics(ro, rewards_all, agg, self.dist, self.model.device, self.cfg.mu, with_kl=self.ref is not None)
        dt = time.perf_counter() - t0
        self._last_step_s = dt  # budget_spent's forecast of the next step
        # where a step's time goes: sampling and rewards; the old and reference log-probs; the mu updates (forward,
        # backward, optimizer) and the metrics
        m.update({"grad_norm": grad_norm, "learning_rate": self.lr_used, "step_time": dt, "time/rollout": t_rollout,
                  "time/logprobs": t_logprobs, "time/update": dt - t_rollout - t_logprobs,
                  "tokens_per_sec": m.pop("completions/tokens") / dt})
        if self.cfg.log_samples:
            self.log.log_samples(self.step, sample_rows(ro, self.cfg.log_samples))
        return m

    # ------------------------------------------------------------------ evaluation, checkpoints, the loop
    def evaluate(self) -> dict[str, float]:
        """Evaluate the policy on the test split's first --eval-limit questions, logged as a line of its own (the step's
        metrics are logged before it) at the tokens generated so far (the curves' x-axis)."""
        cfg = self.cfg
        ecfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size, stop=cfg.stop, limit=cfg.eval_limit)
        self.model.eval()
        with self.autocast():
            # its own bar (rank 0 evaluates): 100 questions take minutes on a CPU, and the training bar stands still
            summary, _ = evaluate(self.model, self.tok, self.test_set[: cfg.eval_limit], ecfg, self.shots,
                                  progress=self.progress and self.dist.main)
        ev = {f"eval/{k}": summary[k] for k in ("accuracy_strict", "accuracy_lenient", "format_soft_rate", "generated_tokens_per_answer")}
        self.log.log(self.step, {**ev, "rollout/generated_tokens_total": float(self.generated_total)})
        return ev

    def evaluate_if_owed(self) -> None:
        """A run stopped during the evaluation after a step (which was logged and checkpointed before it: train)
        owes that evaluation: a resume runs it first, so that a stopped run's evaluations are an unstopped one's."""
        due = bool(self.cfg.eval_every) and (self.step % self.cfg.eval_every == 0 or self.finished())
        if due and self.step > 0 and self.dist.main and not self.log.logged_evaluation(self.step):
            tqdm.write(f"step {self.step}: evaluating it now (no evaluation of it was logged)")
            self.evaluate()

    def save(self) -> None:
        if self.dist.main:
            counters = {"bad_steps": self.bad_steps, "generated_total": self.generated_total, "flat_steps": self.flat_steps,
                        "data_sha256": self.data_fingerprint}
            if self.ref_fingerprint is not None:
                counters["reference_sha256"] = self.ref_fingerprint
            save_checkpoint(self.run_dir, self.step, self.model, self.tok, self.opt, self.sched, counters,
                            self.cfg.keep_checkpoints, dataclasses.asdict(self.cfg))
        D.barrier(self.dist)

    def resume(self) -> bool:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            return False
        self.step, extra = load_checkpoint(found[-1], self.model, self.opt, self.sched)
        self.bad_steps = int(extra.get("bad_steps", 0))
        self.generated_total = int(extra.get("generated_total", 0))
        self.flat_steps = int(extra.get("flat_steps", 0))  # so that the no-signal note comes at the same step
        if not self.finished():  # (a finished run trains nothing: it may go on, to its export or an evaluation)
            refuse_other_anchors(self.run_dir, found[-1], extra, self.cfg, self.ref_fingerprint, self.data_fingerprint)
        if self.dist.main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                truncate_log(self.run_dir / name, self.step)
            self.log.purge_after(self.step)  # TensorBoard too: the steps after the checkpoint will be logged again
        return True

    def finished(self) -> bool:
        """All --steps done, or the --token-budget spent (a resumed run may be either: then it trains nothing)."""
        return limits.finished(self.cfg, self.step, self.generated_total)

    def train(self, until_step: int | None = None) -> dict[str, float]:
        """Run to cfg.steps (or stop after `until_step`, as a kill would); returns the last metrics."""
        cfg, last = self.cfg, {}
        end = min(cfg.steps, until_step or cfg.steps)
        self._t_start = time.perf_counter()
        # with a token budget the run usually ends long before cfg.steps: the bar then counts rollout tokens
        by_tokens = bool(cfg.token_budget)
        bar = tqdm(total=cfg.token_budget if by_tokens else cfg.steps, initial=min(self.generated_total, cfg.token_budget) if by_tokens else self.step,
                   desc="train", unit="tok" if by_tokens else "step", disable=not (self.progress and self.dist.main))
        try:
            if cfg.profile_step > self.step and self.dist.main:
                prepare_profiler(self.model.device)  # before this process's first CUDA graph
            if cfg.eval_every and cfg.eval_at_start and self.step == 0 and self.dist.main:
                start = self.evaluate()  # the baseline
                if note := limits.no_format_note(cfg, start):  # said now, not FLAT_STEPS_HINT steps later
                    tqdm.write(note)
            self.evaluate_if_owed()
            if 0 < cfg.profile_step <= self.step and self.dist.main:  # a resumed run past the step asked for
                tqdm.write(f"note: --profile-step {cfg.profile_step}: this run is past step {cfg.profile_step} already "
                           f"(resumed at step {self.step}); nothing will be profiled")
            # a resumed run may have spent its token budget already (generated_total is the same on every rank)
            spent = limits.tokens_spent(cfg, self.generated_total)
            while self.step < end and not spent:
                if cfg.profile_step == self.step + 1 and self.dist.main:
                    with profiled(self.step + 1, self.run_dir, self.model.device):
                        last = self.train_step()
                    tqdm.write(f"step {self.step}: profile written to {self.run_dir / 'profile'}")
                else:
                    last = self.train_step()
                self.flat_steps = self.flat_steps + 1 if last["frac_reward_zero_std"] == 1.0 else 0
                if self.dist.main and (note := limits.no_signal_note(self.flat_steps, last["reward"], cfg.shots)):
                    tqdm.write(note)
                spent = limits.on_any_rank(self.budget_spent(), self.dist, self.model.device)
                final = self.step == cfg.steps or spent
                # the step's metrics and checkpoint before its evaluation, which takes minutes on a CPU: a Ctrl-C,
                # SIGTERM or out-of-memory there cost every step since the last checkpoint (a review: with the
                # defaults, --eval-every = --save-every = 50, a stop in an evaluation lost 50 steps)
                self.log.log(self.step, last)
                if self.step % cfg.save_every == 0 or final:
                    self.save()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or final) and self.dist.main:
                    last.update(self.evaluate())
                bar.update(min(int(last["rollout/generated_tokens"]), bar.total - bar.n) if by_tokens else 1)
                bar.set_postfix(**({"step": self.step} if by_tokens else {}), reward=f"{last['reward']:.3f}", kl=f"{last.get('kl', 0.0):.4f}",
                                **({"acc": f"{last['eval/accuracy_strict']:.3f}"} if "eval/accuracy_strict" in last else {}))
            if (self.step == cfg.steps or spent) and self.dist.main:
                export_hf(self.model, self.tok, self.run_dir / "final_hf")
                if line := limits.early_end_line(cfg, self.step, self.generated_total, self.run_dir):
                    tqdm.write(line)
        finally:
            bar.close()
            self.log.close()
        return last

    def budget_spent(self) -> bool:  # this rank's view (grpo/limits.py)
        return limits.over_limits(self.cfg, self.generated_total, time.perf_counter() - self._t_start, self._last_step_s)

    def estimate_step_seconds(self) -> float:
        """A rough upper estimate of one step on this machine, from short probes (grpo/estimate.py)."""
        from .estimate import estimate_step_seconds

        return estimate_step_seconds(self)
