"""Static-shape decoding: fixed batch slots, the whole preallocated cache attended under a mask, finished rows
masked rather than removed, and no host synchronisation per token, so that one decode step can be captured in a
CUDA graph and replayed (gpt-fast's shape; on a GPU, launch overhead rather than FLOPs bounds a small model).

The dynamic path (sampler.decode) suits a compute-bound CPU: it drops finished rows and attends only to the
filled slots. This path suits a GPU: every step has the same shapes. `decode(..., static=None)` picks this one
on CUDA. The host looks at the rows only every `check_every` tokens (all finished? a stop string?).

`compiled=True` (--decode compiled) runs the step through torch.compile (inductor) before the CUDA graph captures
it: a graph removes the launch overhead of the step's ~500 kernels but not the kernels themselves, and on a GPU
each small kernel still costs a few microseconds; inductor fuses the elementwise work (RMSNorm, RoPE, SwiGLU,
residuals) into fewer kernels (`python bench/decode_ops.py`, embedded model, bf16, on CPU: 304 operations per step
compiled, 500 eager). Opt-in: it compiles once per model (about 12 s cold on this repo's 2-core CPU, compiled by
region: compiled_step), and once more the first time the batch size and the first time the cache size changes
(each is symbolic from then on), which pays off only over long runs.
"""
from __future__ import annotations

import torch

from .kv_cache import KVCache
from .model import Transformer
from .stop_check import stop_heads, with_heads


class StaticStep:
    """One decode step on fixed buffers: tok [R], pos [R], cache.slot [1] in; logits [R, V] out.
    With `graph=True` (CUDA) the step is captured once in a CUDA graph and replayed; a failed capture falls back
    to eager steps with a warning, so a driver or kernel that cannot be captured costs speed, not the run."""

    def __init__(self, model: Transformer, cache: KVCache, next_pos: torch.Tensor, graph: bool = False,
                 compiled: bool = False):
        if compiled and cache.prefix is not None:
            raise ValueError("the compiled decode step takes a plain cache: fork the prompt's rows instead of sharing it")
        self.model, self.cache = model, cache
        dev = next_pos.device
        R = next_pos.shape[0]
        cache.k[:, :, :, cache.length :].zero_()  # attended under the mask: must be zeros (0 * NaN would poison)
        cache.v[:, :, :, cache.length :].zero_()
        cache.slot = torch.tensor([cache.length], device=dev)
        self.tok = torch.zeros(R, 1, dtype=torch.long, device=dev)  # [R, 1]
        self.pos = next_pos.clone()[:, None]  # [R, 1]
        self.logits = torch.zeros(R, model.cfg.vocab_size, device=dev)  # [R, V] float32
        self.fn = compiled_step(model) if compiled else None
        self.layers_k, self.layers_v = list(cache.k.unbind(0)), list(cache.v.unbind(0))  # L x [R, H_kv, S, D] views
        self.graph = None
        if graph and dev.type == "cuda":
            self._capture()

    @torch.no_grad()  # a decode step never needs gradients (and compiling one under grad mode fails on its writes)
    def _eager(self) -> None:
        if self.fn is not None:
            c = self.cache
            head = self.model.head_weight(torch.promote_types(self.model.lm_head.weight.dtype, torch.float32))
            self.logits.copy_(self.fn(self.tok, self.pos, self.layers_k, self.layers_v, c.key_mask, c.slot, head))
        else:
            self.logits.copy_(self.model(self.tok, positions=self.pos, cache=self.cache, last_only=True).float())

    def _capture(self) -> None:
        import warnings

        key_mask = self.cache.key_mask.clone()
        try:
            # on the buffers' GPU, which need not be the current device (--device cuda:1 outside torchrun): kernels go to
            # their own device's current stream, so a capture on another device's stream records none of them (an
            # empty graph, whose replays leave the logits as they are); torch.cuda.graph's own default capture stream
            # is made once, on whichever device was current then, hence the explicit stream
            with torch.cuda.device(self.logits.device):
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):  # warm-up on a side stream, as torch.cuda.graphs asks
                    for _ in range(2):
                        self._eager()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=s):
                    self._eager()
            self.graph = g
        except Exception as e:  # noqa: BLE001 (any capture failure: run eagerly)
            warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding eagerly", stacklevel=2)
            self.graph = None
        # the warm-up and capture wrote this slot's key mask and cache entries: restore the mask (the entries
        # are overwritten by the real step before anything reads them)
        self.cache.key_mask.copy_(key_mask)

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """Read tok [R]; returns the next logits [R, V] (a buffer, overwritten by the next call)."""
        self.tok.copy_(tok[:, None])
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()
        self.pos += 1
        self.cache.slot += 1
        return self.logits


def compiled_step(model: Transformer):
    """`model`'s static decode step through torch.compile, made once per model and kept on it:
    (tok [R, 1], pos [R, 1], k, v: L x [R, H_kv, S, D], key_mask [R, S], slot [1], head [V, C]) -> logits [R, V]
    float32, writing the step's keys/values and key mask in place.

    Compiled by region (the PyTorch tutorial's "regional compilation"): the step's start (mask, embedding, RoPE),
    one layer, and the end (final norm, LM head) are three compiled functions, and the L layers all run the one
    compiled layer, passed each layer's module and cache. The layers share their code, so dynamo traces one
    (torch 2.5+ lifts a module's weights to inputs: one graph serves every layer, without a recompile per layer)
    and inductor compiles one layer's kernels instead of L copies of them. Measured on this repo's CPU
    (docs/RESULTS.md): a cold compile of the embedded model's step took 46 s whole and 12 s by region, for the
    same kernels bar one per layer boundary (the residual add that a whole-step compile fuses with the next layer's
    norm). On a GPU the step's CUDA graph (StaticStep) captures the compiled kernels as it does eager ones.

    Keys and values come one tensor per layer (views of the cache): a write into a slice of one [L, ...] input is
    traced as a copy of the whole layer (functionalisation's view-scatter, seen in inductor's output code), which on
    every step would read and write the entire KV cache twice; a write into a whole input is done in place, as
    gpt-fast's per-layer buffers are. The float32 LM head weight comes in as an argument: Transformer.head_weight
    keeps its copy by the weight's version counter, which tracing cannot read."""
    fn = getattr(model, "_compiled_step", None)
    if fn is None:
        model.rope(torch.zeros(1, 1, dtype=torch.long, device=model.device), torch.float32)  # RoPE table made eagerly
        start = torch.compile(model._static_start, fullgraph=True)
        layer = torch.compile(_layer_step, fullgraph=True)
        end = torch.compile(_end_step, fullgraph=True)

        def step(tok, pos, k, v, key_mask, slot, head):
            x, cos, sin, mask = start(tok, pos, key_mask, slot)  # [R, 1, C], [R, 1, 1, D] x 2, [R, 1, 1, S]
            for block, k_l, v_l in zip(model.layers, k, v):
                x = layer(block, x, cos, sin, mask, k_l, v_l, slot)  # [R, 1, C]
            return end(model.norm, x, head)  # [R, V]

        fn = model._compiled_step = step
    return fn


def _layer_step(block, x, cos, sin, mask, k, v, slot):
    """One layer of a static step, its keys/values k, v [R, H_kv, S, D] written at `slot` in place: [R, 1, C]."""
    return block(x, cos, sin, mask, 0, KVCache([k], [v], None, 0, slot))  # (layer 0 of a one-layer cache)


def _end_step(norm, x, head):
    """The final norm and the float32 LM head, also under bf16 autocast (GRPO rollouts): [R, 1, C] -> [R, V]."""
    h = norm(x)[:, -1].float()
    with torch.autocast(h.device.type, enabled=False):
        return torch.nn.functional.linear(h, head)


@torch.no_grad()
def decode_static(model: Transformer, prefix, cfg, generator=None, stop=None, pad_id: int = 0, check_every: int = 16,
                  graph: bool = True, compiled: bool = False, max_tokens: torch.Tensor | None = None, stop_context=None):
    """Same contract as sampler.decode (returns a SampleResult), with static shapes: every row runs every step
    until the host, every `check_every` tokens, sees all rows finished. Finished rows keep their slot (masked),
    as do rows that reached their own cap in `max_tokens` [R]."""
    from .sampler import EOS, LENGTH, STOP, SampleResult, _pick, row_caps

    R, T = prefix.rows, cfg.max_new_tokens
    heads = stop_heads(stop, stop_context, R)  # [R] each row's context for the stop check, or None
    dev = prefix.logits.device
    caps = row_caps(max_tokens, R, T, dev)  # [R] or None
    if prefix.cache.capacity - prefix.cache.length < T - 1:
        raise ValueError(f"prefix has room for {prefix.cache.capacity - prefix.cache.length} tokens, needs {T - 1}")
    tokens = torch.full((R, T), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(R, T, dtype=torch.float32, device=dev)
    lengths = torch.full((R,), T, dtype=torch.long, device=dev)
    reason = torch.zeros(R, dtype=torch.long, device=dev)  # 0 length, 1 eos, 2 stop
    done = torch.zeros(R, dtype=torch.bool, device=dev)
    eos = torch.tensor(cfg.eos_ids, dtype=torch.long, device=dev)
    rows = torch.arange(R, device=dev)
    step = StaticStep(model, prefix.cache, prefix.next_pos, graph=graph, compiled=compiled) if T > 1 else None
    logits, checked, t_end = prefix.logits, 0, T
    for t in range(T):
        tok, lp = _pick(logits, cfg, generator, rows, t)  # device ops only
        tokens[:, t] = torch.where(done, torch.full_like(tok, pad_id), tok)
        logprobs[:, t] = torch.where(done, torch.zeros_like(lp), lp)
        ended = ~done & torch.isin(tok, eos)
        lengths = torch.where(ended, torch.full_like(lengths, t + 1), lengths)
        reason = torch.where(ended, torch.ones_like(reason), reason)
        done |= ended
        if caps is not None:
            capped = ~done & (caps <= t + 1)  # [R] reached its own cap: finish "length" at t + 1
            lengths = torch.where(capped, torch.full_like(lengths, t + 1), lengths)
            done |= capped
        if (t + 1) % check_every == 0 or t == T - 1:  # the only host synchronisation: every check_every tokens
            if stop is not None:
                _stop_strings(tokens, lengths, reason, done, stop, checked, t + 1, heads)
            checked = t + 1
            if bool(done.all()):
                t_end = t + 1
                break
        if t < T - 1:
            logits = step(tok)
    keep = torch.arange(T, device=dev)[None] < lengths[:, None]
    tokens = torch.where(keep, tokens, torch.full_like(tokens, pad_id))
    logprobs = torch.where(keep, logprobs, torch.zeros_like(logprobs))
    names = {0: LENGTH, 1: EOS, 2: STOP}
    forward_tokens = R * (t_end - 1)
    return SampleResult(tokens, logprobs, lengths, [names[int(x)] for x in reason.tolist()], forward_tokens)


def _stop_strings(tokens, lengths, reason, done, stop, t0: int, t1: int, heads=None) -> None:
    """Rows that completed a stop string at a position in [t0, t1): end them there (in place). heads: each row's
    context (stop_check.stop_heads), read before its first tokens."""

    toks, L, fin, why = tokens[:, :t1].tolist(), lengths.tolist(), done.tolist(), reason.tolist()
    pairs, tails = [], []
    for r in range(len(toks)):
        # a row ended by EOS is not checked at its EOS token: EOS wins, as on the dynamic path
        end = (L[r] - 1 if why[r] == 1 else L[r]) if fin[r] else t1
        for t in range(t0, min(t1, end)):
            pairs.append((r, t))
            tails += with_heads([toks[r][max(0, t + 1 - stop.window) : t + 1]], [r], heads, stop.window)
    if not tails:
        return
    hit = stop(tails)
    seen = set()
    for (r, t), h in zip(pairs, hit):
        if h and r not in seen:  # the first position in the chunk that completes a stop string
            seen.add(r)
            lengths[r], reason[r], done[r] = t + 1, 2, True
