#!/usr/bin/env bash
# The headline experiment: plain GRPO against MCTS-GRPO from the same start, same seed, same budget of generated
# rollout tokens; learning curves (PNG + TensorBoard), then both final policies evaluated with greedy decoding,
# majority vote and tree search on the same test questions.
#
#   bash scripts/experiment.sh [OUT_DIR]          CPU-small (about 45 minutes on a 2-core CPU)
#   bash scripts/experiment.sh --gpu [OUT_DIR]    GPU-sized (hours on one H100-class GPU)
#
# GSM8K from GSM8K_DIR (or the hub); the embedded model unless MODEL is set. Results: OUT_DIR/summary.md.
# CPU-small prompts are 2-shot: zero-shot, the embedded 135M model never writes the <reasoning>/<answer> format,
# so every reward is 0 and neither run can learn anything (the first run of this script showed exactly that).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=cpu
if [ "${1:-}" = "--gpu" ]; then SIZE=gpu; shift; fi
OUT=${1:-runs/experiment}
PY=${PYTHON:-python3}
MODEL_FLAG=()
if [ -n "${MODEL:-}" ]; then MODEL_FLAG=(--model "$MODEL"); fi
if [ "$SIZE" = cpu ]; then
  TRAIN=(--shots 2 --prompts-per-step 2 --group-size 8 --max-new-tokens 128 --micro-batch 8 --token-budget 24000
         --steps 100 --eval-every 4 --eval-limit 8 --eval-batch-size 8 --save-every 100 --lr 1e-5 --warmup-steps 2)
  EVAL=(--shots 2 --limit 16 --max-new-tokens 128 --batch-size 16)
  N=4; SIMS=2
else
  TRAIN=(--prompts-per-step 16 --group-size 8 --max-new-tokens 256 --micro-batch 32 --token-budget 3000000
         --steps 100000 --eval-every 25 --eval-limit 200 --eval-batch-size 100 --save-every 50 --lr 2e-6)
  EVAL=(--limit 500 --max-new-tokens 256 --batch-size 100)
  N=8; SIMS=8
fi
mkdir -p "$OUT"
for kind in plain mcts; do
  if [ -f "$OUT/$kind/final_hf/config.json" ]; then echo "$OUT/$kind done already"; continue; fi
  extra=()
  if [ "$kind" = mcts ]; then extra=(--rollouts mcts --tree-advantage mix --tree-advantage-weight 0.5); fi
  rm -rf "$OUT/$kind"
  "$PY" run.py train "${MODEL_FLAG[@]}" "${TRAIN[@]}" "${extra[@]}" --seed 0 --out-dir "$OUT/$kind"
done
"$PY" scripts/plot_runs.py "$OUT/curves.png" "$OUT/plain" "$OUT/mcts"
for kind in start plain mcts; do
  spec=(); [ "$kind" != start ] && spec=(--model "$OUT/$kind/final_hf") || spec=("${MODEL_FLAG[@]}")
  for search in greedy majority mcts; do
    s=(--search "$search"); [ "$search" = majority ] && s+=(--n "$N"); [ "$search" = mcts ] && s+=(--n-simulations "$SIMS")
    "$PY" run.py eval "${spec[@]}" "${EVAL[@]}" "${s[@]}" --out-dir "$OUT/eval-$kind-$search" > /dev/null
  done
done
{
  echo "# Plain GRPO vs MCTS-GRPO ($SIZE settings, $(date -u +%Y-%m-%d), $(uname -m))"
  echo; echo "## Training"; echo; cat "$OUT/curves.md"
  echo; echo "## Final policies"; echo
  echo "| policy | decoding | accuracy (strict) | accuracy (lenient) | format rate | generated tokens / question |"
  echo "|---|---|---|---|---|---|"
  for kind in start plain mcts; do for search in greedy majority mcts; do
    "$PY" -c "import json,sys; s=json.load(open('$OUT/eval-$kind-$search/summary.json')); print(f\"| $kind | $search | {s['accuracy_strict']:.3f} | {s['accuracy_lenient']:.3f} | {s['format_soft_rate']:.2f} | {s['generated_tokens_per_question']:.0f} |\")"
  done; done
} > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "curves: $OUT/curves.png; TensorBoard: tensorboard --logdir $OUT"
