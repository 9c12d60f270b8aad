"""Static-shape decoding (the GPU path) gives the dynamic path's tokens and log-probs; runs on CPU without graphs."""
import warnings

import pytest
import torch
from helpers import random_prompts, tiny_hf_model

from model_io import SamplingConfig, generate
from model_io.convert import from_hf_model
from model_io.sampler import decode_mode


class StopAt:
    window = 2

    def __init__(self, token):
        self.token = token

    def __call__(self, tails):
        return [self.token in t for t in tails]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_equals_dynamic_greedy_with_eos_and_stop(arch):
    model = from_hf_model(tiny_hf_model(arch, dtype=torch.float64, vocab=40, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 9, 2, 7], vocab=40)
    free = generate(model, prompts, SamplingConfig(max_new_tokens=20, temperature=0.0))
    stop = StopAt(free.row(2)[6])
    for kw in (dict(), dict(stop=stop), dict(stop=StopAt(3))):  # the last one fires on EOS itself: EOS wins
        cfg = SamplingConfig(max_new_tokens=20, temperature=0.0, eos_ids=(3,))
        dyn = generate(model, prompts, cfg, static=False, **kw)
        sta = generate(model, prompts, cfg, static=True, **kw)
        assert torch.equal(dyn.tokens, sta.tokens) and dyn.finish == sta.finish
        assert torch.equal(dyn.lengths.cpu(), sta.lengths.cpu())
        assert torch.allclose(dyn.logprobs, sta.logprobs, atol=1e-6)


def test_static_sampling_with_one_generator_matches_dynamic_before_any_row_ends():
    model = from_hf_model(tiny_hf_model(dtype=torch.float64))
    prompts = random_prompts([4, 6])
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)  # no EOS: no row is dropped on the dynamic path
    a = generate(model, prompts, cfg, torch.Generator().manual_seed(3), static=False)
    b = generate(model, prompts, cfg, torch.Generator().manual_seed(3), static=True)
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_cuda_graph_decoding_matches_eager_on_gpu(mode):
    model = from_hf_model(tiny_hf_model(dtype=torch.float32)).cuda()
    prompts = random_prompts([5, 9, 3])
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.0)
    a = generate(model, prompts, cfg, static=False)
    a3 = generate(model, prompts, cfg, n=3, static=False, share_prompt=mode != "compiled")  # the same attention path
    with decode_mode(mode), warnings.catch_warnings():  # static: the eager step in a CUDA graph; compiled: the compiled step in one
        # a failed capture falls back to eager steps with a warning, which would pass unseen: fail on it here
        warnings.filterwarnings("error", message="CUDA graph capture failed")
        warnings.filterwarnings("error", message="The CUDA Graph is empty")
        b = generate(model, prompts, cfg)
        # three rows per prompt reading its keys/values in place (model_io/shared_kv.py) inside the captured step;
        # the compiled step takes only a plain cache, so there they are copies (sampler.shares_prompts)
        c = generate(model, prompts, cfg, n=3)
    assert torch.equal(a.tokens.cpu(), b.tokens.cpu())
    assert torch.equal(a3.tokens.cpu(), c.tokens.cpu())


def test_compiled_decode_step_matches_the_eager_static_step_across_shapes(monkeypatch):
    """--decode compiled: the step through torch.compile (inductor; on CPU here, before any CUDA graph) gives the
    eager static step's tokens and log-probs, also after a batch/cache size change forces a (dynamic) recompile.
    `generate` under decode_mode("compiled") itself asks for the compiled step (and "static" does not): else the
    comparison would hold the eager step against itself."""
    import model_io.static_decode as static_decode
    from model_io import prefill
    from model_io.static_decode import StaticStep

    asked = []
    real = static_decode.compiled_step
    monkeypatch.setattr(static_decode, "compiled_step", lambda m: asked.append(m) or real(m))
    model = from_hf_model(tiny_hf_model("qwen2", vocab=40, eos_token_id=3, pad_token_id=0)).eval()
    runs = [(random_prompts([5, 9, 2, 7], vocab=40, seed=1), 16), (random_prompts([6, 3], vocab=40, seed=2), 24)]
    for i, (prompts, n) in enumerate(runs):
        cfg = SamplingConfig(max_new_tokens=n, temperature=0.0, eos_ids=(3,))
        with decode_mode("static"):
            eager = generate(model, prompts, cfg)
        assert len(asked) == i and (i > 0 or getattr(model, "_compiled_step", None) is None)
        with decode_mode("compiled"):
            comp = generate(model, prompts, cfg)
        assert len(asked) == i + 1 and asked[-1] is model and model._compiled_step is not None
        assert torch.equal(eager.tokens, comp.tokens) and eager.finish == comp.finish
        assert torch.allclose(eager.logprobs, comp.logprobs, atol=1e-4)
        assert (comp.lengths > 1).all()  # the compiled step ran: rows went past their first (prefill) token
    # under bf16 autocast (GRPO rollouts on a GPU) the LM head stays float32: logits not rounded to bf16
    pre = prefill(model, runs[0][0], room=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = StaticStep(model, pre.cache, pre.next_pos, compiled=True)(pre.logits.argmax(-1))
    assert logits.dtype == torch.float32 and not torch.equal(logits, logits.bfloat16().float())
    assert getattr(model, "_compiled_step", None) is not None



def test_compiled_step_compiles_one_layer_for_all_layers():
    """The compiled step is compiled by region (static_decode.compiled_step): its start, one layer, its end. Four
    layers make three graphs, not six (no recompile per layer: a cold compile's time is one layer's), and the step
    gives the eager static step's logits."""
    from torch._dynamo.utils import counters

    from model_io import prefill
    from model_io.static_decode import StaticStep

    model = from_hf_model(tiny_hf_model("llama", vocab=40, eos_token_id=3, pad_token_id=0, num_hidden_layers=4, seed=5)).eval()
    prompts = random_prompts([3, 6, 4], vocab=40, seed=4)
    logits = []
    torch._dynamo.reset()  # compiled code is kept per function, across models: another test's may fit these shapes
    before = counters["stats"]["unique_graphs"]
    for compiled in (False, True):
        pre = prefill(model, prompts, room=6)
        step = StaticStep(model, pre.cache, pre.next_pos, compiled=compiled)
        tok = pre.logits.argmax(-1)
        logits.append([step(tok).clone(), step(tok + 1).clone()])  # two steps: the second reads the first's keys
    assert counters["stats"]["unique_graphs"] - before == 3
    for eager, comp in zip(*logits):
        assert torch.allclose(eager, comp, atol=1e-4)


def test_static_step_mask_rows_start_at_multiples_of_8(monkeypatch):
    """SDPA copies a mask with a stride (the last aside) that is not a multiple of 8 into a padded one for its
    memory-efficient CUDA kernel (attention.cpp preprocess_mask), in every layer of every step: the static step's
    mask is a slice of a padded [R, 1, 1, S8] buffer. Here the cache holds
    9 + 4 = 13 slots; the step's tokens are those of the dynamic path."""
    import model_io.model as model_mod
    from model_io import prefill
    from model_io.static_decode import StaticStep

    seen = []
    plain = model_mod.grouped_attention
    monkeypatch.setattr(model_mod, "grouped_attention", lambda q, k, v, mask: seen.append(mask) or plain(q, k, v, mask))
    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None))
    prompts = random_prompts([5, 9], vocab=40)
    pre = prefill(model, prompts, room=4)
    assert pre.cache.capacity == 13
    tok = pre.logits.argmax(-1)
    seen.clear()
    logits = StaticStep(model, pre.cache, pre.next_pos)(tok)
    assert seen and all(m.shape[-1] == 13 and all(st % 8 == 0 for st in m.stride()[:-1]) and m.stride(-1) == 1 for m in seen)
    with torch.no_grad():
        ref = model(tok[:, None], positions=pre.next_pos[:, None], cache=prefill(model, prompts, room=4).cache, last_only=True)
    assert torch.allclose(logits, ref, atol=1e-5)


@pytest.mark.parametrize("static", [False, True])
def test_decoding_under_bf16_autocast_keeps_a_bf16_cache(static):
    """GRPO samples under bf16 autocast with float32 master weights on a GPU; the same on CPU autocast here. The
    cache holds bf16 keys/values as the layers make them (the static path's index_copy_ does not cast: a float32
    cache failed there), and greedy tokens match the float32 path's for the first steps."""
    from model_io import prefill

    model = from_hf_model(tiny_hf_model(vocab=40, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 9, 2], vocab=40)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    ref = generate(model, prompts, cfg, static=static)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert prefill(model, prompts, room=4).cache.k.dtype == torch.bfloat16
        out = generate(model, prompts, cfg, static=static)
    assert torch.equal(out.tokens[:, :4], ref.tokens[:, :4])
    assert (out.logprobs - ref.logprobs).abs()[:, :4].max() < 0.05


def test_cuda_graph_is_captured_on_the_buffers_device(monkeypatch):
    """--device cuda:1 outside torchrun leaves cuda:0 the current device. Kernels go to their own device's current
    stream, so a warm-up or capture on a stream of the current device records none of the step (an empty graph: every
    replay leaves the logits as they were). With torch.cuda faked: the side stream and the capture stream must be
    on the device of the step's buffers (here the CPU stands in for cuda:1)."""
    import contextlib

    from model_io import prefill
    from model_io.static_decode import StaticStep

    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None)).eval()  # (before torch.cuda is faked)
    pre = prefill(model, random_prompts([3, 5], vocab=40), room=4)
    step = StaticStep(model, pre.cache, pre.next_pos)
    cur = [torch.device("cuda:0")]  # the current device
    seen = []

    class Stream:
        def __init__(self, device=None, priority=0):
            self.device = cur[0] if device is None else torch.device(device)

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def switch(dev, what):  # torch.cuda.device, and torch.cuda.stream (which makes its stream's device current)
        prev, cur[0] = cur[0], torch.device(dev)
        seen.append((what, cur[0]))
        try:
            yield
        finally:
            cur[0] = prev

    class graph:  # torch.cuda.graph: the given stream, else one made once on the device current then
        default = None

        def __init__(self, g, pool=None, stream=None, capture_error_mode="global"):
            if stream is None and graph.default is None:
                graph.default = Stream()
            self.ctx = switch((stream or graph.default).device, "capture")

        def __enter__(self):
            self.ctx.__enter__()

        def __exit__(self, *exc):
            return self.ctx.__exit__(*exc)

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torch.cuda, "device", lambda dev: switch(dev, "device"))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: switch(s.device, "warm-up"))
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    step._capture()
    dev = step.logits.device
    assert step.graph is not None
    assert [w for w in seen if w[0] != "device"] == [("warm-up", dev), ("capture", dev)], seen


def test_the_gpu_only_paths_compile_and_match_eager(monkeypatch):
    """A GPU's decode step attends through enable_gqa (model.GQA_AT_DECODE) and adds the residuals in the output
    projections' matmuls (linear.RESIDUAL_IN_GEMM): forced onto the CPU, torch.compile traces both and gives the
    eager step's tokens and log-probs, and the eager step with them gives the plain model's tokens."""
    from model_io import linear
    from model_io import model as model_mod

    model = from_hf_model(tiny_hf_model("llama", vocab=40, eos_token_id=3, pad_token_id=0)).eval()
    prompts = random_prompts([5, 9, 2], vocab=40, seed=3)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0, eos_ids=(3,))
    with decode_mode("static"):
        plain = generate(model, prompts, cfg)
    monkeypatch.setattr(model_mod, "GQA_AT_DECODE", ("cpu",))
    monkeypatch.setattr(linear, "RESIDUAL_IN_GEMM", ("cpu",))
    with decode_mode("static"):
        eager = generate(model, prompts, cfg)
    with decode_mode("compiled"):
        comp = generate(model, prompts, cfg)
    assert torch.equal(plain.tokens, eager.tokens) and torch.equal(eager.tokens, comp.tokens)
    assert torch.allclose(plain.logprobs, eager.logprobs, atol=1e-5)
    assert torch.allclose(eager.logprobs, comp.logprobs, atol=1e-4) and (comp.lengths > 1).all()


def test_static_step_ignores_whatever_the_unwritten_slots_held():
    """The static step attends to every slot of the cache under a mask; slots not yet written come from
    torch.empty and may hold anything, NaN included (0 * NaN is NaN). Filled with NaN here: the step's logits are
    still finite and those of the dynamic step."""
    from model_io import prefill
    from model_io.static_decode import StaticStep

    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None)).eval()
    prompts = random_prompts([5, 9], vocab=40)
    tok = prefill(model, prompts, room=4).logits.argmax(-1)
    pre = prefill(model, prompts, room=4)
    pre.cache.k[:, :, :, pre.cache.length:] = float("nan")
    pre.cache.v[:, :, :, pre.cache.length:] = float("nan")
    logits = StaticStep(model, pre.cache, pre.next_pos)(tok)
    with torch.no_grad():
        ref = model(tok[:, None], positions=pre.next_pos[:, None], cache=prefill(model, prompts, room=4).cache, last_only=True)
    assert torch.isfinite(logits).all() and torch.allclose(logits, ref, atol=1e-5)


def test_static_decoding_counts_the_tokens_it_runs():
    """forward_tokens on the static path: every row runs every step but the first token's (read from the prefill's
    logits): R * (max_new_tokens - 1) when no row ends, as on the dynamic path, plus the prompts' tokens."""
    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None))
    prompts = random_prompts([5, 3], vocab=40)
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0)
    for static in (False, True):
        assert generate(model, prompts, cfg, static=static).forward_tokens == 8 + 2 * 5


class StopAtExactWindow:
    """A stop on three adjacent tokens that looks at exactly three: the tails must hold the newest `window`
    tokens, not one fewer. Records the longest tail it was handed."""

    window = 3

    def __init__(self, seq):
        self.seq, self.longest = list(seq), 0

    def __call__(self, tails):
        self.longest = max([self.longest] + [len(t) for t in tails])
        return [t[-3:] == self.seq for t in tails]


@pytest.mark.parametrize("static", [False, True])
def test_a_stop_as_long_as_its_window_is_seen_whole(static):
    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None))
    prompts = random_prompts([5, 7], vocab=40)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = generate(model, prompts, cfg, static=static)
    stop = StopAtExactWindow(free.row(0)[3:6])
    res = generate(model, prompts, cfg, static=static, stop=stop)
    assert res.row(0) == free.row(0)[:6] and res.finish[0] == "stop"
    assert stop.longest == 3


def test_static_sampling_with_row_keys_matches_dynamic_as_rows_end():
    """Counter-based RowKeys draw row r's t-th number from r's key alone: the static path (every row in its slot)
    and the dynamic path (finished rows dropped, the batch compacted) give the same samples and log-probs, rows
    ending at different times on an EOS; also for two rows per prompt, forked (copies of the prompt's cache,
    with room) or sharing the prompt's keys/values."""
    from model_io.row_keys import RowKeys

    model = from_hf_model(tiny_hf_model(dtype=torch.float64, vocab=24, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([4, 6, 3, 5], vocab=24, seed=1)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_ids=(3, 5))
    for n, share in ((1, False), (2, False), (2, True)):
        keys = RowKeys.from_names([f"row{i}" for i in range(4 * n)], torch.device("cpu"))
        dyn = generate(model, prompts[: 4 // n], cfg, keys, n=n, share_prompt=share, static=False)
        sta = generate(model, prompts[: 4 // n], cfg, keys, n=n, share_prompt=share, static=True)
        assert len(set(dyn.lengths.tolist())) > 1 and len(set(dyn.tokens[:, 0].tolist())) > 1
        assert torch.equal(dyn.tokens, sta.tokens) and dyn.finish == sta.finish
        assert torch.allclose(dyn.logprobs, sta.logprobs, atol=1e-6)


def test_the_compiled_steps_end_gives_bf16_weights_a_float32_head():
    """The compiled step's last region (final norm, LM head), run eagerly: a bf16 model's hidden states meet the
    float32 head weight (Transformer.head_weight) and give the model's own float32 logits."""
    from model_io.static_decode import _end_step

    model = from_hf_model(tiny_hf_model(vocab=40, pad_token_id=0, eos_token_id=None)).to(torch.bfloat16)
    x = torch.randn(3, 1, model.cfg.dim).bfloat16()
    with torch.no_grad():
        got = _end_step(model.norm, x, model.head_weight(torch.float32))
        want = model.logits(model.norm(x)[:, -1])
    assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)


def test_static_checks_every_few_tokens_end_rows_once_and_stop_when_all_are_done():
    """decode_static looks at the rows every `check_every` tokens (4 here). A row that completes a stop in one chunk
    ends there, even if the stop comes again in a later chunk (here the dynamic path's tokens and finishes); and
    once every row is finished (caps 2, 3, 4) no further step runs: 3 steps of 3 rows, not 11."""
    from model_io import prefill
    from model_io.static_decode import decode_static

    model = from_hf_model(tiny_hf_model(vocab=40, eos_token_id=3, pad_token_id=0))
    prompts = random_prompts([5, 7, 3], vocab=40)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    free = generate(model, prompts, cfg, static=False)
    rows = [free.row(r) for r in range(3)]
    token = next(t for row in rows for t in row[:4] if t in row[4:])  # seen in the first chunk and a later one
    want = generate(model, prompts, cfg, static=False, stop=StopAt(token))
    assert "stop" in want.finish
    got = decode_static(model, prefill(model, prompts, room=12), cfg, stop=StopAt(token), check_every=4, graph=False)
    assert torch.equal(got.tokens, want.tokens) and got.finish == want.finish
    assert torch.equal(got.lengths.cpu(), want.lengths.cpu())
    capped = decode_static(model, prefill(model, prompts, room=12), cfg, check_every=4, graph=False,
                           max_tokens=torch.tensor([2, 3, 4]))
    assert [capped.row(r) for r in range(3)] == [rows[0][:2], rows[1][:3], rows[2][:4]]
    assert capped.forward_tokens == 3 * 3
