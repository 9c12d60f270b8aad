#!/usr/bin/env bash
# The headline experiment: plain GRPO against MCTS-GRPO from the same start, same seed, same budget of generated
# rollout tokens; learning curves (PNG + TensorBoard), then both final policies evaluated with greedy decoding,
# majority vote and tree search on the same test questions.
#
#   bash scripts/experiment.sh [OUT_DIR]          CPU-small (26-28 minutes measured on 2-core CPUs)
#   bash scripts/experiment.sh --gpu [OUT_DIR]    GPU-sized (hours on one H100-class GPU)
#
# OUT_DIR defaults to runs/experiment. GSM8K from GSM8K_DIR (or the hub); the embedded model unless MODEL is set.
# Relative OUT_DIR, GSM8K_DIR and MODEL paths are taken from the directory you run it in. Results:
# OUT_DIR/summary.md. Run again after an interruption: a training run with a checkpoint resumes from it
# (`run.py train --resume`; a finished one trains nothing), one stopped before its first checkpoint starts again;
# an eval cut short continues (`run.py eval --resume`).
# CPU-small prompts are 2-shot: zero-shot, the embedded 135M model never writes the <reasoning>/<answer> format,
# so every reward is 0 and neither run can learn anything (the first run of this script showed exactly that).
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
SIZE=cpu
OUT=
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --gpu) SIZE=gpu ;;
    -*) echo "error: unknown option $arg: use --gpu, or -h for help" >&2; exit 2 ;;
    "") echo "error: OUT_DIR is empty: give a directory, or leave it out for runs/experiment" >&2; exit 2 ;;
    *) if [ -n "$OUT" ]; then echo "error: one OUT_DIR at most (got $OUT and $arg): see -h" >&2; exit 2; fi; OUT=$arg ;;
  esac
done
# the script runs from the repository root (cd below): paths the caller gave are relative to the caller's directory
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
if [ -n "$OUT" ]; then OUT=$(abs "$OUT"); else OUT=runs/experiment; fi  # (the default: the repository's runs/)
if [ -n "${GSM8K_DIR:-}" ]; then export GSM8K_DIR=$(abs "$GSM8K_DIR"); fi
if [ -n "${MODEL:-}" ] && [ -e "$MODEL" ]; then MODEL=$(abs "$MODEL"); fi  # (else a hub id: left as it is)
cd "$(dirname "$0")/.."
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
  if compgen -G "$OUT/$kind/checkpoints/step-*/trainer_state.pt" > /dev/null; then
    # interrupted (or finished before its export): continue it, its saved config unchanged
    "$PY" run.py train --resume "$OUT/$kind"
    continue
  fi
  extra=()
  if [ "$kind" = mcts ]; then extra=(--rollouts mcts --tree-advantage mix --tree-advantage-weight 0.5); fi
  # (a run stopped before its first checkpoint: run.py train starts it over in its directory itself, and refuses a
  # directory that holds anything else; this script once removed the directory, whatever it held)
  "$PY" run.py train "${MODEL_FLAG[@]}" "${TRAIN[@]}" "${extra[@]}" --seed 0 --out-dir "$OUT/$kind"
done
"$PY" scripts/plot_runs.py "$OUT/curves.png" "$OUT/plain" "$OUT/mcts"
for kind in start plain mcts; do
  # a run directory stands for its newest checkpoint, the final weights (also where a resumed finished run has no final_hf)
  spec=(); [ "$kind" != start ] && spec=(--model "$OUT/$kind") || spec=("${MODEL_FLAG[@]}")
  for search in greedy majority mcts; do
    s=(--search "$search"); [ "$search" = majority ] && s+=(--n "$N"); [ "$search" = mcts ] && s+=(--n-simulations "$SIMS")
    d="$OUT/eval-$kind-$search"
    # an eval cut short continues where it stopped (eval refuses to start over on an interrupted eval's answers)
    [ -f "$d/predictions.jsonl.partial" ] && s+=(--resume)
    "$PY" run.py eval "${spec[@]}" "${EVAL[@]}" "${s[@]}" --out-dir "$d" > /dev/null
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
