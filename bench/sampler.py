"""Our sampler against transformers' `generate`, greedy, same model, prompts, batch and max_new_tokens, in one run.

    python bench/sampler.py --batch 32 --max-new-tokens 256

Both stop a row at EOS. Tokens/s counts each row's tokens up to and including its EOS (the useful output), the
same way for both, so the ratio is wall time for the same work: the same rows, to EOS or max_new_tokens. In float32
the two give the same tokens; in bf16 they part at near-ties (our logits come from a float32 LM head,
transformers' from a bf16 one), and the line "rows with identical greedy tokens" says how many rows agree.
transformers runs its default `generate` (eager, dynamic cache: no static cache, no compile). Prints both, then
the ratio.

Also times one decode step on the static path (a CUDA graph on a GPU) at the run's cache size, against the floor
of reading every weight once per step: weight bytes / measured device-to-device copy bandwidth (bytes copied per
second, bench/machine.py). A copy both reads and writes each byte, so a pure read of the weights could run up to
2x faster than this floor: it is the issue's definition, not a hard lower bound. Nor is it the whole of what a
static step reads: it also reads its whole KV cache (every slot of every row, filled or not, under the mask), at
the benchmark's sizes (batch 64, ~430 slots) 2.3x the weight bytes; a second floor counts those and the float32 LM
head. With --compiled, the decode
step's time again through torch.compile (--decode compiled), after the figures above (a compile cut short by a
time limit leaves them).
Each figure is printed as soon as it is measured: ours and the decode step, then (transformers loaded only
then) transformers'.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench/, last (bench/mcts.py must not hide mcts)

import torch  # noqa: E402

from data import encode_prompts, load_gsm8k, stop_token_ids  # noqa: E402
from model_io import SamplingConfig, export_hf, generate, load  # noqa: E402
from model_io.loading import embedded_gguf  # noqa: E402
from cli import add_device, add_gsm8k, add_model, check_args, check_device, check_fits, parser, user_errors  # noqa: E402
from machine import copy_bandwidth  # noqa: E402


def useful_length(row: list[int], eos: tuple[int, ...]) -> int:
    return next((i + 1 for i, t in enumerate(row) if t in eos), len(row))


def main(argv=None) -> None:
    ap = parser(__doc__)
    add_model(ap)
    ap.add_argument("--batch", type=int, default=32, help="prompts per batch (default: 32)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="default: 256")
    add_gsm8k(ap)
    add_device(ap)
    ap.add_argument("--compiled", action="store_true", help="also time the decode step through torch.compile "
                    "(default: off)")
    args = ap.parse_args(argv)
    check_args(ap, args, at_least_1=("batch", "max_new_tokens"))
    args.device = check_device(ap, args.device)

    with user_errors(ap):
        problems = load_gsm8k("test", args.gsm8k)[: args.batch]  # first: a wrong --gsm8k costs no model load
        model, tok = load(args.model, device=args.device)
    check_fits(ap, model, tok, [p.question for p in problems], (), args.max_new_tokens, shots_flag=False)  # (no --shots)
    prompts = encode_prompts(tok, [p.question for p in problems])
    eos = stop_token_ids(tok, model.cfg.eos_token_ids)
    pad = tok.pad_token_id
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # dev: need not be current
    print(f"device={dev} threads={torch.get_num_threads()} batch={args.batch} max_new_tokens={args.max_new_tokens} "
          f"prompt tokens={sum(map(len, prompts))} (max {max(map(len, prompts))})")

    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0, eos_ids=eos)
    generate(model, prompts[:2], SamplingConfig(max_new_tokens=4, temperature=0.0, eos_ids=eos), pad_id=pad)  # warm-up

    sync(); t0 = time.perf_counter()
    ours = generate(model, prompts, cfg, pad_id=pad)
    sync(); t_ours = time.perf_counter() - t0
    ours_rows = [ours.row(i) for i in range(len(prompts))]
    n_ours = sum(map(len, ours_rows))
    # each figure printed as soon as it is measured: a run cut off by a time limit keeps what it had
    print(f"ours                 : {n_ours} tokens in {t_ours:.2f}s = {n_ours / t_ours:.1f} tokens/s", flush=True)
    floor_s, bw, head_extra = weight_read_floor(model, dev)
    step_s, kv_bytes, slots = decode_step_time(model, prompts, pad, dev, sync, args.max_new_tokens)
    print(f"decode step (batch {len(prompts)}): {step_s * 1e3:.2f} ms; floor = weight bytes / copy bandwidth: "
          f"{floor_s * 1e3:.3f} ms ({bw / 1e9:.0f} GB/s copied, each byte read and written: a read of the weights "
          f"alone may be up to 2x faster); step / floor = {step_s / floor_s:.1f}")
    if head_extra:  # what this step's design adds to the floor: the float32 LM head (model.head_weight)
        head_floor = floor_s + head_extra / bw
        print(f"decode step floor with the LM head read as float32, as the step reads it (+{head_extra / 1e6:.1f} MB): "
              f"{head_floor * 1e3:.3f} ms; step / that floor = {step_s / head_floor:.1f}", flush=True)
    # all a static step must read: the weights as it reads them, and its whole KV cache, which it attends under a
    # mask (slots not yet filled too): the floor counts the weights alone
    full_floor = floor_s + (head_extra + kv_bytes) / bw
    print(f"decode step floor with the KV cache it reads ({slots} slots x {len(prompts)} rows, +{kv_bytes / 1e6:.1f} MB, "  # (one colon: the summary's split)
          f"{kv_bytes / (floor_s * bw):.2f}x the weights) and the float32 head: {full_floor * 1e3:.3f} ms; step / that "
          f"floor = {step_s / full_floor:.1f}", flush=True)

    # transformers, on the same weights in the same dtype
    from transformers import AutoModelForCausalLM

    spec = os.path.expanduser(args.model) if args.model else str(embedded_gguf())  # ('~' as load() takes it)
    kw = {"gguf_file": os.path.basename(spec)} if spec.endswith(".gguf") else {}
    if not kw and os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "config.json")):
        spec = os.path.join(tempfile.mkdtemp(), "hf")  # one of our checkpoints: transformers reads an HF export of it
        export_hf(model, tok, spec)
    # a bare `model.gguf` lies in '.': dirname '' would be taken for a hub id
    hf = AutoModelForCausalLM.from_pretrained((os.path.dirname(spec) or ".") if kw else spec, dtype=model.embed.weight.dtype, **kw)
    hf = hf.to(dev).eval()
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], am[i, P - len(p):] = torch.tensor(p), 1
    ids, am = ids.to(dev), am.to(dev)

    with torch.no_grad():  # (its warm-up)
        hf.generate(input_ids=ids[:2], attention_mask=am[:2], max_new_tokens=4, do_sample=False, pad_token_id=pad)

    sync(); t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=args.max_new_tokens, do_sample=False,
                          eos_token_id=list(eos), pad_token_id=pad)
    sync(); t_hf = time.perf_counter() - t0
    hf_rows = [r[: useful_length(r, eos)] for r in out[:, P:].tolist()]

    n_hf = sum(map(len, hf_rows))
    same = sum(a == b for a, b in zip(ours_rows, hf_rows))
    print(f"transformers generate: {n_hf} tokens in {t_hf:.2f}s = {n_hf / t_hf:.1f} tokens/s")
    print(f"rows with identical greedy tokens: {same}/{len(prompts)}; rows ended by EOS: "
          f"{sum(f == 'eos' for f in ours.finish)}/{len(prompts)}")
    print(f"ratio ours/transformers tokens/s: {(n_ours / t_ours) / (n_hf / t_hf):.2f}", flush=True)
    if args.compiled:  # the decode step alone (the 10x target's figure): one compile, not one per cache size
        try:  # a failed compile costs these figures, not the ones above
            t0 = time.perf_counter()
            cstep_s = decode_step_time(model, prompts, pad, dev, sync, args.max_new_tokens, compiled=True)[0]
            print(f"decode step compiled (batch {len(prompts)}): {cstep_s * 1e3:.2f} ms; step / floor = "
                  f"{cstep_s / floor_s:.1f}; uncompiled / compiled = {step_s / cstep_s:.2f}"
                  + (f"; step / floor with the float32 head = {cstep_s / (floor_s + head_extra / bw):.1f}" if head_extra else "")
                  + f"; step / floor with the KV cache and float32 head = {cstep_s / full_floor:.1f}"
                  + f" (compile, capture and timing {time.perf_counter() - t0:.1f}s)")
        except Exception as e:  # noqa: BLE001
            print(f"compiled decode step failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def decode_step_time(model, prompts, pad, dev, sync, room: int, compiled: bool = False, steps: int = 32) -> tuple[float, int, int]:
    """Seconds per decode step on the static path (a CUDA graph on GPU) with `room` free cache slots (the real
    decode's cache size: every static step attends to all of it), the bytes of that KV cache (keys and values of
    every layer, row and slot: what each step reads besides the weights) and its slots per row."""
    from model_io import prefill
    from model_io.static_decode import StaticStep

    pre = prefill(model, prompts, room=max(room, steps + 2), pad_id=pad)
    step = StaticStep(model, pre.cache, pre.next_pos, graph=dev.type == "cuda", compiled=compiled)
    tok = pre.logits.argmax(-1)
    step(tok)  # warm-up
    sync(); t0 = time.perf_counter()
    for _ in range(steps):
        step(tok)
    sync()
    c = pre.cache
    return (time.perf_counter() - t0) / steps, c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size(), c.capacity


def weight_read_floor(model, dev) -> tuple[float, float, int]:
    """The floor of a decode step set by reading every weight once: weight bytes / device-to-device copy bandwidth
    (bench/machine.py: bytes copied per second, each read and written, so up to 2x above what a read-only stream
    would need). Returns (floor seconds, bandwidth in bytes copied per second, the bytes a step reads beyond the
    weights as stored: the logits come from a float32 copy of the LM head (model.head_weight), so with bf16 weights
    the step reads the head at 4 bytes a value, not 2; 0 with float32 weights)."""
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())  # (a tied head is one parameter, counted once)
    head = model.lm_head.weight
    extra = head.numel() * max(0, 4 - head.element_size())
    bw = copy_bandwidth(dev)
    return nbytes / bw, bw, extra

if __name__ == "__main__":
    main()
