"""How long one GRPO step will take on this machine, said before a CPU run starts (`run.py train` prints it):
short probes of sampling, prefill and the training pass, scaled to the run's shape."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from model_io import SamplingConfig, generate
from model_io.linear import drop_packed

from .rollout import Rollout, completion_logprobs

if TYPE_CHECKING:
    from .trainer import Trainer


def estimate_step_seconds(trainer: Trainer) -> float:
    """A rough upper estimate of one step, from probes as if every row ran to max_new_tokens: 8 decode steps
    of one micro-batch of rows, their prompt's prefill timed apart and counted once per prompt, and one
    forward+backward of a micro-batch through the training pass itself (prompts shared by their rows).
    Probing a flat prompt+completion pass and counting the prefill in every token's time made the estimate
    3.8x the measured step (1029 s against 269-291 s for the default run on a 2-core AVX2 CPU)."""
    cfg, model = trainer.cfg, trainer.model
    rows, G, T = cfg.micro_batch, cfg.group_size, cfg.max_new_tokens
    prompt = trainer.prompts(trainer.step_indices(0)[:1])[0]

    def sampling(new_tokens: int) -> float:
        t = time.perf_counter()
        generate(model, [prompt], SamplingConfig(max_new_tokens=new_tokens, temperature=1.0),
                 torch.Generator(device=model.device).manual_seed(0), n=rows)
        return time.perf_counter() - t

    B = math.ceil(rows / G)  # prompts a micro-batch of rows spans
    completions = torch.randint(0, model.cfg.vocab_size, (B * G, T), generator=torch.Generator().manual_seed(0))
    probe = Rollout(problems=[], prompts=[prompt] * B, completions=completions, old_logp=torch.zeros(B * G, T),
                    mask=torch.ones(B * G, T, dtype=torch.bool), finish=[], texts=[], rewards=torch.zeros(B, G),
                    per_fn={}, advantages=torch.zeros(B, G), forward_tokens=0)
    with trainer.autocast():
        # Untimed first: a first call's one-time costs (packing the weights) made the prefill probe 1.8x a later
        # one and the decode probe, a difference, 20-40% short (2-shot prompt x 8 rows: docs/RESULTS.md).
        sampling(1)
        prefill = sampling(1)  # the prompt's prefill and one token
        per_token = max(sampling(9) - prefill, 0.0) / 8
        t = time.perf_counter()
        lp, _ = completion_logprobs(model, probe, torch.arange(rows), T, trainer.tok.pad_token_id, cfg.logprob_chunk)
    lp.sum().backward()
    fwd_bwd = time.perf_counter() - t
    drop_packed(model)
    trainer.opt.zero_grad(set_to_none=True)
    prompts = len(trainer.step_indices(0))
    n_micro = math.ceil(prompts * G / rows)
    extra_forwards = (trainer.ref is not None) + trainer.recompute_old
    return prompts * prefill + n_micro * (per_token * T + fwd_bwd * (cfg.mu + extra_forwards / 3))  # forward ~ 1/3 of fwd+bwd

