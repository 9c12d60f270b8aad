"""The KV-cached sampler: token ids in, token ids and log-probs out.

    prefix = prefill(model, prompts, room=max_new_tokens)   # the prompts, left-padded, into a new cache
    prefix = prefix.fork(rows)                              # e.g. G copies of each prompt: rows repeated by index
    result = decode(model, prefix, cfg, generator)          # one token per step for every live row

The cache is allocated once per call (no growing by concatenation, which copies the whole cache every step).
Rows that finish (EOS, a stop criterion) are dropped from the batch: once a quarter of the cached rows are
finished the cache is compacted, so finished rows cost at most a third more work, never a whole step each.
Sampling takes an explicit torch.Generator: the same seed and inputs give the same tokens.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .kv_cache import KVCache
from .model import Transformer, run_dtype
from .row_keys import RowKeys, key_hash
from .shared_kv import share
from .stop_check import StopFn, stop_heads, with_heads

# which decode path `decode(static=None)` takes: auto (static shapes + CUDA graphs on a GPU, the dynamic path that
# drops finished rows on a CPU), static or dynamic everywhere, or compiled (static with the step through
# torch.compile: model_io/static_decode.py); run.py sets it from --decode
DECODE_MODES = ("auto", "static", "dynamic", "compiled")
_decode_mode = "auto"


def check_decode_mode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown --decode {mode!r}: use one of {', '.join(DECODE_MODES)}")
    return mode


def set_decode_mode(mode: str) -> None:
    global _decode_mode
    _decode_mode = check_decode_mode(mode)


@contextmanager
def decode_mode(mode: str):
    """`set_decode_mode(mode)` for a block, the previous mode restored after it (benchmarks and tests)."""
    before = _decode_mode
    set_decode_mode(mode)
    try:
        yield
    finally:
        set_decode_mode(before)


def shares_prompts() -> bool:
    """Whether rows continuing one prompt read its keys/values in place (Prefix.share): not under --decode
    compiled, whose compiled step knows only a plain cache."""
    return _decode_mode != "compiled"


# finish reasons, as stored in SampleResult.finish ("unsure": the next token's entropy passed max_entropy)
EOS, STOP, LENGTH, UNSURE = "eos", "stop", "length", "unsure"


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    eos_ids: tuple[int, ...] = ()  # tokens that end a row (kept as its last token)
    max_entropy: float = 0.0  # > 0: a row ends, before sampling, where the next token's entropy (nats) exceeds it

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:  # (NaN passed `< 0` and sampled the last id of every row)
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:  # (was taken as off)
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [R, T] completion ids, pad_id after each row's length
    logprobs: torch.Tensor  # [R, T] float32 log p(token) at temperature 1 (GRPO's old log-probs); 0 past length
    lengths: torch.Tensor  # [R] tokens generated per row, its EOS/stop token included
    finish: list[str] = field(default_factory=list)  # [R] "eos" | "stop" | "length" | "unsure"
    forward_tokens: int = 0  # tokens that went through the model in this call (prefill counted by `prefill`)

    def row(self, r: int) -> list[int]:
        return self.tokens[r, : int(self.lengths[r])].tolist()


@dataclass
class Prefix:
    """The state after reading some tokens: a KV cache and the logits of the next token, for R rows."""

    cache: KVCache
    logits: torch.Tensor  # [R, V] float32 next-token logits
    next_pos: torch.Tensor  # [R] position id of the next token
    forward_tokens: int = 0  # tokens run through the model to build it

    @property
    def rows(self) -> int:
        return self.logits.shape[0]

    def fork(self, rows: torch.Tensor, room: int | None = None) -> "Prefix":
        """Rows `rows` (LongTensor [R'], repeats allowed) of this prefix, with `room` free slots each
        (default: as many as now). The prefix itself is untouched, so it can be forked again."""
        if self.cache.prefix is not None:
            raise ValueError("fork a prefix before share(), not after: its rows read their prompts in place")
        room = self.cache.capacity - self.cache.length if room is None else room
        rows = rows.to(self.logits.device)
        return Prefix(self.cache.select(rows, self.cache.length + room), self.logits[rows], self.next_pos[rows])

    def share(self, n: int, room: int) -> "Prefix":
        """`n` rows per row of this prefix (row b*n + j continues row b), each with `room` slots of its own, that
        read this prefix's keys/values in place instead of copies (model_io/shared_kv.py): for decoding, which
        then reads each prompt's keys/values once a step, not n times. The prefix must not be extended after."""
        c = self.cache
        if c.prefix is not None:
            raise ValueError("this prefix is shared already")
        filled = c.length
        shared = share(c.k[:, :, :, :filled], c.v[:, :, :, :filled], c.key_mask[:, :filled], n, c.k.dtype)
        own = KVCache.empty_like(c, c.batch * n, room)
        own.prefix = shared
        rows = torch.arange(c.batch, device=self.logits.device).repeat_interleave(n)
        return Prefix(own, self.logits[rows], self.next_pos[rows])


_warned_positions: list[bool] = []  # generate's warning of positions past the context, said once per process


@torch.no_grad()
def prefill(model: Transformer, prompts: Sequence[Sequence[int]], room: int, pad_id: int = 0, per_row: bool | None = None) -> Prefix:
    """Run the prompts through the model once, left-padded (right-aligned) so that every row's next token lands in slot P
    (the longest prompt's length); leave `room` cache slots for new tokens.

    per_row (default: on CPU): each prompt alone, its keys/values copied into its cache row. On a compute-bound CPU
    this skips the padding, which in a GSM8K batch is a third of the prefill. Off: one left-padded batch, which
    suits a GPU, where launches rather than FLOPs are the cost."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prefill needs at least one prompt and no empty prompt")
    lo, hi = min(min(p) for p in prompts), max(max(p) for p in prompts)  # (past the embedding: an IndexError deep in
    if lo < 0 or hi >= model.cfg.vocab_size:                                # torch on a CPU, a device assert on a GPU)
        raise ValueError(f"prompt token ids must be in [0, {model.cfg.vocab_size}), the model's vocabulary; got {lo if lo < 0 else hi}")
    dev = model.device
    per_row = dev.type == "cpu" if per_row is None else per_row
    B, P = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, P), pad_id, dtype=torch.long)
    key_mask = torch.zeros(B, P, dtype=torch.bool)
    for b, p in enumerate(prompts):  # left padding
        tokens[b, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        key_mask[b, P - len(p) :] = True
    tokens, key_mask = tokens.to(dev), key_mask.to(dev)
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
    # keys/values as the layers make them: in the autocast dtype under autocast (bf16 rollouts of float32 master
    # weights on a GPU: half the cache memory and traffic), else the weights' dtype
    cache = KVCache.empty(model.cfg, B, P + room, dev, run_dtype(dev.type, model.embed.weight.dtype))
    if not per_row:
        logits = model(tokens, positions=positions, cache=cache, key_mask=key_mask, last_only=True)  # [B, V]
    else:
        logits = torch.empty(B, model.cfg.vocab_size, device=dev, dtype=torch.promote_types(model.embed.weight.dtype, torch.float32))
        cache.k[:, :, :, :P].zero_()  # the padding slots no row writes: masked, but they must not hold NaN garbage
        cache.v[:, :, :, :P].zero_()
        for b, p in enumerate(prompts):
            n = len(p)
            row = KVCache.empty(model.cfg, 1, n, dev, cache.k.dtype)
            logits[b] = model(tokens[b : b + 1, P - n :], cache=row, last_only=True)[0]
            cache.k[:, b, :, P - n : P] = row.k[:, 0]
            cache.v[:, b, :, P - n : P] = row.v[:, 0]
        cache.key_mask[:, :P] = key_mask
        cache.length = P
    return Prefix(cache, logits.float(), positions[:, -1] + 1, forward_tokens=int(key_mask.sum()))


# one generator for the batch, one per row, or counter-based per-row keys (model_io/row_keys.py: no state, the
# same draws on the static and the dynamic path; what GRPO and tree search use on a GPU)
Generators = torch.Generator | Sequence[torch.Generator] | RowKeys | None


def key_generator(key: str, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(key_hash(key) & (2**63 - 1))


def row_rng(names: Sequence[str], device="cpu") -> list[torch.Generator] | RowKeys:
    """Per-row randomness keyed by `names`: counter-based RowKeys on a GPU (no launch per row per token, and
    static-shape decoding stays on), one torch.Generator per row on a CPU (where the dynamic path is the fast
    one; kept there so that CPU runs reproduce the figures recorded before RowKeys). Either way a row's draws
    depend on its name only."""
    if torch.device(device).type == "cuda":
        return RowKeys.from_names(names, device)
    return [key_generator(n, device) for n in names]


def key_uniform(key: str) -> float:
    """A number in [0, 1) from a string key (a coin that consumes no generator's state)."""
    return key_hash(key) / 2**64


@torch.no_grad()
def extend(model: Transformer, prefix: Prefix, tokens: torch.Tensor, mask: torch.Tensor) -> Prefix:
    """Read more tokens into each row of `prefix` (which is consumed: fork it first to keep it).

    tokens [R, L] are right-aligned: row r's new tokens are its last mask[r].sum() slots, the slots before them
    padding (masked out of attention), so every row's next token still lands in one shared slot. Rows with no
    new tokens keep their next-token logits. Tree search uses this to continue a node: the prompt's cache is
    forked and only the node's path is read, never the prompt again."""
    R, L = tokens.shape
    assert mask.shape == (R, L) and R == prefix.rows, "tokens and mask must be [R, L] for the prefix's R rows"
    if L == 0:
        return prefix
    if prefix.cache.capacity - prefix.cache.length < L:
        raise ValueError(f"prefix has room for {prefix.cache.capacity - prefix.cache.length} tokens, extend needs {L}")
    tokens, mask = tokens.to(prefix.logits.device), mask.to(prefix.logits.device)
    positions = prefix.next_pos[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0)  # [R, L]
    logits = model(tokens, positions=positions, cache=prefix.cache, key_mask=mask, last_only=True).float()
    logits = torch.where(mask.any(-1)[:, None], logits, prefix.logits)
    return Prefix(prefix.cache, logits, prefix.next_pos + mask.sum(-1), forward_tokens=int(mask.sum()))


def _pick(logits: torch.Tensor, cfg: SamplingConfig, generator: Generators, rows: torch.Tensor, t: int = 0):
    """Next token [R] and its temperature-1 log-prob [R] from float32 logits [R, V]; t: the token's index.

    `generator` is one torch.Generator for the batch, or one per result row (indexed by `rows`), or RowKeys
    (draw t of each row's key): then each row's draws depend on its own seed only, not on which other rows
    share the batch (GRPO shards across processes give the same samples as one process)."""
    if cfg.temperature == 0:
        tok = logits.argmax(-1)
    else:
        x = logits / cfg.temperature
        if cfg.top_k > 0:
            kth = torch.topk(x, min(cfg.top_k, x.shape[-1]), dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if cfg.top_p < 1.0:
            # nucleus (Holtzman et al. 2020): keep the smallest set of top tokens whose mass reaches top_p
            sx, si = torch.sort(x, dim=-1, descending=True)
            p = sx.softmax(-1)
            drop = (p.cumsum(-1) - p) >= cfg.top_p  # mass before this token already reaches top_p
            x = x.scatter(-1, si, sx.masked_fill(drop, float("-inf")))
        # inverse-CDF sampling: one uniform draw per row, so per-row generators cost a scalar each, not a
        # multinomial over the whole vocabulary (which took a fifth of tree search's time). The sum runs in float64:
        # near the top of a float32 cumulative sum its steps are 6e-8 wide, so a rare token's slice of [0, 1) rounds
        # to a whole step or to none (on SmolLM2 ~3e-4 of the mass per token moved, some tokens never drawn), and the
        # tokens drawn would no longer follow the log-probs reported for them (GRPO's old log-probs). Each
        # probability itself is exact enough in float32 (relative error ~1e-7); the sum's resolution was the fault
        cdf = x.softmax(-1).cumsum(-1, dtype=torch.float64)  # [R, V]
        if generator is None or isinstance(generator, torch.Generator):
            u = torch.rand(cdf.shape[0], generator=generator, device=cdf.device, dtype=torch.float64)
        elif isinstance(generator, RowKeys):
            u = generator.uniform(rows, t).to(cdf.device)  # float64 in [0, 1 - 2^-53]
        else:
            u = torch.cat([torch.rand(1, generator=generator[r], device=generator[r].device, dtype=torch.float64)
                           for r in rows.tolist()]).to(cdf.device)
        # side="right": the first token whose cumulative mass exceeds u * total, so zero-mass tokens are never drawn
        tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    lp = logits.gather(-1, tok[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    return tok, lp


@torch.no_grad()
def decode(
    model: Transformer,
    prefix: Prefix,
    cfg: SamplingConfig,
    generator: Generators = None,
    stop: StopFn | None = None,
    pad_id: int = 0,
    static: bool | None = None,
    max_tokens: torch.Tensor | None = None,
    stop_context: Sequence[Sequence[int]] | None = None,
) -> SampleResult:
    """Sample up to cfg.max_new_tokens per row after `prefix` (which is consumed: fork it first to keep it).
    max_tokens (LongTensor [R], each in [1, max_new_tokens]): a row's own cap, where rows of one batch have
    different room (tree leaves at different depths); a row reaching it ends with finish "length", and on this
    path leaves the batch like a finished row instead of sampling on to the batch's longest cap.
    stop_context ([R] token lists): what each row continues that `stop` must see too, where the call resumes an
    answer begun earlier (tree search's paths, lookahead's committed steps): see stop_heads. Not the prompt.

    static: fixed shapes and a CUDA graph per step (model_io/static_decode.py) instead of dropping finished rows,
    which suits a compute-bound CPU. Default (None): as set_decode_mode says; "auto" is static on CUDA with one
    generator, RowKeys or none (per-row torch.Generators cost a launch per row per token there)."""
    if static is None:
        auto = prefix.logits.device.type == "cuda" and (generator is None or isinstance(generator, (torch.Generator, RowKeys)))
        static = _decode_mode in ("static", "compiled") or (_decode_mode == "auto" and auto)
    if static and cfg.max_entropy <= 0:
        from .static_decode import decode_static

        return decode_static(model, prefix, cfg, generator, stop, pad_id, compiled=_decode_mode == "compiled",
                             max_tokens=max_tokens, stop_context=stop_context)
    R, T = prefix.rows, cfg.max_new_tokens
    heads = stop_heads(stop, stop_context, R)  # [R] each row's context for the stop check, or None
    caps = row_caps(max_tokens, R, T, prefix.logits.device)  # [R]
    if prefix.cache.capacity - prefix.cache.length < T - 1:
        raise ValueError(f"prefix has room for {prefix.cache.capacity - prefix.cache.length} tokens, needs {T - 1}")
    dev = prefix.logits.device
    tokens = torch.full((R, T), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(R, T, dtype=torch.float32, device=dev)
    lengths = torch.full((R,), T, dtype=torch.long)
    finish = [LENGTH] * R
    eos = torch.tensor(cfg.eos_ids, dtype=torch.long, device=dev)
    cache, logits, pos = prefix.cache, prefix.logits, prefix.next_pos.clone()
    rows = torch.arange(R, device=dev)  # [r] result row of each cached row
    alive = torch.ones(R, dtype=torch.bool, device=dev)  # [r] cached row still generating
    forward_tokens = 0
    for t in range(T):
        if cfg.max_entropy > 0:  # lookahead decoding hands uncertain positions to tree search
            lsm = logits.log_softmax(-1)
            unsure = alive & (-(lsm.exp() * lsm).sum(-1) > cfg.max_entropy)
            for r in unsure.nonzero().flatten().tolist():
                lengths[int(rows[r])], finish[int(rows[r])] = t, UNSURE
            alive &= ~unsure
            if not bool(alive.any()):
                break
        tok, lp = _pick(logits, cfg, generator, rows, t)  # [r]
        live = rows[alive]
        tokens[live, t] = tok[alive]
        logprobs[live, t] = lp[alive]
        ended = torch.isin(tok, eos) & alive  # [r]
        stopped = torch.zeros_like(alive)
        if stop is not None:
            tails = with_heads(tokens[live, max(0, t + 1 - stop.window) : t + 1].tolist(), live.tolist(), heads, stop.window)
            stopped[alive] = torch.tensor(stop(tails), dtype=torch.bool, device=dev) & ~ended[alive]
        for r in (ended | stopped).nonzero().flatten().tolist():  # at most R times over the whole call
            lengths[int(rows[r])] = t + 1
            finish[int(rows[r])] = EOS if bool(ended[r]) else STOP
        alive &= ~(ended | stopped)
        if caps is not None:
            capped = alive & (caps[rows] <= t + 1)  # [r] reached its own cap: finish "length" at t + 1
            lengths[rows[capped].cpu()] = t + 1
            alive &= ~capped
        n_alive = int(alive.sum())
        if n_alive == 0 or t == T - 1:
            break
        if 4 * (alive.numel() - n_alive) >= alive.numel():  # compact: drop finished rows from the batch
            keep = alive.nonzero().flatten()
            cache = cache.select(keep)
            rows, alive, tok, pos = rows[keep], alive[keep], tok[keep], pos[keep]
        logits = model(tok[:, None], positions=pos[:, None], cache=cache, last_only=True).float()
        forward_tokens += tok.numel()
        pos = pos + 1
    return SampleResult(tokens, logprobs, lengths.to(dev), finish, forward_tokens)


def row_caps(max_tokens: torch.Tensor | None, R: int, T: int, device) -> torch.Tensor | None:
    """decode's per-row caps, checked: None, or LongTensor [R] on `device` with every cap in [1, T]."""
    if max_tokens is None:
        return None
    caps = torch.as_tensor(max_tokens, dtype=torch.long).to(device)
    if caps.shape != (R,) or bool((caps < 1).any()) or bool((caps > T).any()):
        raise ValueError(f"max_tokens must be {R} caps in [1, {T}], got {caps.tolist()}")
    return caps


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    generator: Generators = None,
    n: int = 1,
    stop: StopFn | None = None,
    pad_id: int = 0,
    static: bool | None = None,
    max_tokens: torch.Tensor | None = None,
    share_prompt: bool | None = None,
    stop_context: Sequence[Sequence[int]] | None = None,
) -> SampleResult:
    """`n` completions per prompt, rows grouped by prompt: row b*n + g is completion g of prompt b.
    Each prompt is run through the model once; its n rows then read its keys/values in place (Prefix.share), or
    with `share_prompt=False` continue from copies of them (default: shared for n > 1, except with
    --decode compiled, whose compiled step knows only a plain cache). max_tokens: per-row caps [B * n] (see decode).
    stop_context: per prompt [B], the tokens of an answer the prompt ends in (see decode), for each of its n rows."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # (0 and -1 gave one row per prompt)
        raise ValueError(f"n (completions per prompt) must be an integer >= 1, got {n!r}")
    if max(map(len, prompts), default=0) + cfg.max_new_tokens > model.cfg.max_position_embeddings and not _warned_positions:
        _warned_positions.append(True)  # once per process (a run samples thousands of batches); RoPE runs on past the
        print(f"warning: prompt + new tokens run past the model's max_position_embeddings "  # context, untrained there
              f"({model.cfg.max_position_embeddings}), where its outputs degrade: use fewer --shots or a smaller "
              f"--max-new-tokens", file=sys.stderr)
    if share_prompt is None:
        share_prompt = n > 1 and shares_prompts()
    prefix = prefill(model, prompts, room=0 if share_prompt else cfg.max_new_tokens, pad_id=pad_id)
    if share_prompt:
        prefix = prefix.share(n, room=cfg.max_new_tokens)
    elif n > 1:
        prefix = prefix.fork(torch.arange(len(prompts)).repeat_interleave(n))
    rows_context = None if stop_context is None else [c for c in stop_context for _ in range(n)]  # [B * n]
    res = decode(model, prefix, cfg, generator, stop, pad_id, static=static, max_tokens=max_tokens, stop_context=rows_context)
    res.forward_tokens += sum(len(p) for p in prompts)
    return res
