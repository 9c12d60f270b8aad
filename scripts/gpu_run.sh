#!/usr/bin/env bash
# One command for a GPU run: every figure the project claims on a GPU, each step timed and written as soon as
# it finishes (a run cut off still leaves numbers), then OUT_DIR/summary.md with the card's name and the date.
#
#   GSM8K_DIR=/path/to/gsm8k bash scripts/gpu_run.sh MODEL OUT_DIR [MINUTES]
#
# MODEL: any model spec (e.g. the staged GGUF /root/m/SmolLM2-135M-Instruct.Q4_1.gguf). MINUTES (default 8) bounds
# the whole run: the GRPO step gets what the other steps leave. Needs torch, transformers, accelerate,
# safetensors, tqdm, tensorboard (+ gguf for a .gguf model); no datasets, no network. SMALL=1 shrinks every size
# (a CPU rehearsal of the script). SHOTS (default 2): k-shot prompts for the accuracies, the GRPO run and the
# grid; zero-shot the default 135M model never writes the <reasoning>/<answer> format, so every reward is 0 and
# GRPO has nothing to learn from (2-shot, its reward rose from 0.05 to ~0.7 in 10 steps on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/gpu_run.sh MODEL OUT_DIR [MINUTES]}
OUT=${2:?usage: scripts/gpu_run.sh MODEL OUT_DIR [MINUTES]}
MINUTES=${3:-8}
export SHOTS=${SHOTS:-2}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
START=$(date +%s)
if [ "${SMALL:-0}" = 1 ]; then B1=4; B2=8; NEW=16; Q=4; QM=2; SIMS=1; BA=2; TA=8; else B1=64; B2=256; NEW=256; Q=500; QM=128; SIMS=8; BA=16; TA=32; fi
left() { echo $(( MINUTES * 60 - ($(date +%s) - START) )); }
step() {  # step NAME CMD...: run, time, keep the log; a failed step is recorded and the run goes on
  local name=$1; shift
  local t0=$(date +%s)
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/steps.txt"
  tail -n 5 "$OUT/$name.log"
}
step 1-env "$PY" scripts/gpu_env.py "$OUT/env.json"
# the CUDA-only tests (CUDA graphs against eager decoding), where pytest is installed
if "$PY" -c "import pytest" 2>/dev/null; then
  step 1-cuda-tests "$PY" -m pytest -q tests/test_static_decode.py tests/test_logprobs.py
else
  echo "1-cuda-tests skipped: no pytest here" | tee -a "$OUT/steps.txt"
fi
step 2-sampler-b$B1 "$PY" bench/sampler.py --model "$MODEL" --batch $B1 --max-new-tokens $NEW
step 2-sampler-b$B2 "$PY" bench/sampler.py --model "$MODEL" --batch $B2 --max-new-tokens $NEW
# the fast path's greedy tokens against the CPU float32 path: first TA tokens, log-probs within bf16 tolerance
step 2-agreement "$PY" bench/agreement.py --model "$MODEL" --batch $BA --tokens $TA --max-new-tokens $(( 2 * TA ))
step 3-eval-start "$PY" run.py eval --model "$MODEL" --shots $SHOTS --limit $Q --max-new-tokens $NEW --batch-size 128 --out-dir "$OUT/eval-start"
TRAIN_MIN=$(( ($(left) - 150) / 60 ))  # leave ~2.5 minutes for the evaluations after it
if [ "$TRAIN_MIN" -ge 1 ]; then
  step 4-train "$PY" run.py train --model "$MODEL" --shots $SHOTS --max-minutes $TRAIN_MIN --steps 100000 --eval-every 0 --save-every 100000 \
       --out-dir "$OUT/train" $( [ "${SMALL:-0}" = 1 ] && echo --prompts-per-step 1 --group-size 2 --max-new-tokens $NEW )
  step 4-eval-trained "$PY" run.py eval --model "$OUT/train/final_hf" --shots $SHOTS --limit $Q --max-new-tokens $NEW --batch-size 128 --out-dir "$OUT/eval-trained"
else
  echo "4-train skipped: no time left" | tee -a "$OUT/steps.txt"
fi
# one GPU: a 1-process NCCL group must initialise and take training steps (the multi-GPU path, issue 5 sec. 3)
step 4-nccl "$PY" -m torch.distributed.run --nproc_per_node 1 run.py train --model "$MODEL" --steps 2 --prompts-per-step 1 \
     --group-size 2 --max-new-tokens 16 --eval-every 0 --out-dir "$OUT/nccl"
step 5-compare "$PY" bench/compare.py --model "$MODEL" --shots $SHOTS --limit $QM --n 1,4,8 --sims $SIMS --roots puct --max-new-tokens $NEW --batch-size 64 --out "$OUT/compare"
# 6. summary
"$PY" - "$OUT" <<'PYEOF'
import json, os, sys, datetime
from pathlib import Path
out = Path(sys.argv[1])
def load(p):
    try:
        return json.loads((out / p).read_text())
    except (OSError, ValueError):
        return None
env = load("env.json") or {}
lines = [f"# GPU run: {env.get('device', '?')}, {datetime.date.today()}", "", "| figure | value |", "|---|---|"]
for k, v in env.items():
    lines.append(f"| {k} | {v} |")
for f in sorted(out.glob("2-sampler-*.log")):
    for l in f.read_text().splitlines():
        if l.startswith(("transformers generate:", "ours", "decode step", "ratio")):
            lines.append(f"| {f.stem}: {l.split(':')[0]} | {l.split(':', 1)[1].strip()} |")
ag = out / "2-agreement.log"
if ag.is_file():
    for l in ag.read_text().splitlines():
        if l.startswith(("reference:", "rows whose first", "log-prob abs difference", "reference model's margin", "agreement:")):
            k, v = l.split(":", 1)
            lines.append(f"| agreement with CPU float32: {k} | {v.strip()} |")
for name in ("eval-start", "eval-trained"):
    s = load(f"{name}/summary.json")
    if s:
        lines.append(f"| {name} accuracy strict / lenient / format rate ({s['questions']} questions, {os.environ.get('SHOTS', '2')}-shot) | "
                     f"{s['accuracy_strict']:.3f} / {s['accuracy_lenient']:.3f} / {s['format_soft_rate']:.2f} |")
m = (out / "train/metrics.jsonl")
if m.is_file():
    ms = [x for x in (json.loads(l) for l in m.read_text().splitlines() if l.strip()) if "reward" in x]
    if ms:
        k = min(5, len(ms))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        lines.append(f"| GRPO steps / reward, mean of first {k} / of last {k} | {ms[-1]['step']} / {mean([x['reward'] for x in ms[:k]]):.3f} / "
                     f"{mean([x['reward'] for x in ms[-k:]]):.3f} |")
        lines.append(f"| GRPO mean step time (s) | {sum(x['step_time'] for x in ms) / len(ms):.2f} |")
c = load("compare/compare.json")
if c:
    for r in c["rows"]:
        lines.append(f"| compare {r['strategy']} {r['budget']}: accuracy lenient, tokens/question | {r['accuracy_lenient']:.3f}, {r['generated_tokens_per_question']:.0f} |")
steps = (out / "steps.txt")
if steps.is_file():
    lines += ["", "Steps:", "", "```", steps.read_text().strip(), "```"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
