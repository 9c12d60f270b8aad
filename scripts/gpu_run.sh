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
# GRPO has nothing to learn from (2-shot, its reward rose from 0.05 to ~0.7 in 10 steps on CPU). STEPS (default:
# all): the steps to run, as name prefixes ("2-sampler 1-cuda 5-mcts": a second run for the figures a first one
# did not reach); 4-eval-trained comes with 4-train, and 1-env always runs.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/gpu_run.sh MODEL OUT_DIR [MINUTES]}
OUT=${2:?usage: scripts/gpu_run.sh MODEL OUT_DIR [MINUTES]}
MINUTES=${3:-8}
# checked before anything runs: bash's arithmetic on "abc" or "1.5" failed in every step, which then ran anyway
[[ $MINUTES =~ ^(0|[1-9][0-9]*)$ ]] || { echo "error: MINUTES must be a whole number of minutes (0 runs each step at its 30 s floor), got '$MINUTES'" >&2; exit 2; }
SHOTS=${SHOTS:-2}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || { echo "error: cannot write into OUT_DIR '$OUT' (a file there, or no permission): pass a directory" >&2; exit 2; }
START=$(date +%s)
if [ "${SMALL:-0}" = 1 ]; then B1=4; B2=8; NEW=16; Q=4; QM=2; QD=2; SIMS=1; BA=2; TA=8; else B1=64; B2=256; NEW=256; Q=500; QM=128; QD=16; SIMS=2,8; BA=16; TA=32; fi
left() { echo $(( MINUTES * 60 - ($(date +%s) - START) )); }
cap() {  # cap LIMIT RESERVE: seconds a step may take, LIMIT at most, so that RESERVE seconds stay for what follows
  local c=$(( $(left) - $2 )); [ "$c" -gt "$1" ] && c=$1; [ "$c" -lt 30 ] && c=30; echo "$c"
}
wanted() {  # wanted NAME: is the step among STEPS (name prefixes; unset or empty: every step)? 1-env always is
  [ -z "${STEPS:-}" ] || [ "$1" = 1-env ] && return 0  # (the summary's card name and the floor's bandwidth)
  local s; for s in $STEPS; do case "$1" in "$s"*) return 0 ;; esac; done; return 1
}
step() {  # step NAME CMD...: run, time, keep the log; a failed step is recorded and the run goes on
  local name=$1; shift
  wanted "$name" || return 0
  local t0=$(date +%s)
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/steps.txt"
  tail -n 5 "$OUT/$name.log"
  "$PY" scripts/gpu_summary.py "$OUT" > /dev/null 2>&1 || true  # a run cut off later still has its summary
}
fresh() {  # fresh DIR CMD...: CMD on an empty DIR: a step run again measures again (eval refuses to start over on
  rm -rf "$1"; shift; "$@"  # an interrupted eval's answers, and a resumed one's seconds would add the first run's)
}
diag() {  # diag NAME LIMIT CMD...: a diagnostic step, skipped once fewer than 30 s of MINUTES are left
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  if [ "$(left)" -lt 30 ]; then echo "$name skipped: no time left" | tee -a "$OUT/steps.txt"; return; fi
  step "$name" timeout "$(cap "$limit" 0)" "$@"
}
# Order: the issue's figures first (environment, sampler, accuracy, GRPO, search), each step time-limited so that
# a slow one (a long compile) cannot starve GRPO of its minutes; diagnostics last, in whatever time is left.
# The budget, in seconds: after training, POST for the trained model's accuracy, the NCCL check and the grid;
# training itself at least TRAIN_MIN plus TRAIN_SLACK (start-up, the model load, the last step, the final checkpoint
# and export, which --max-minutes does not count). Each step before it keeps what those need, so that even if every
# step runs to its limit, training runs (at MINUTES 8: 60 s of steps; more whenever a step ends early). On an H200
# (docs/RESULTS.md, 2026-12-04): the steps after training took 20 + 26 + 53 s, training's own start and end 17 s.
POST=130 TRAIN_MIN=60 TRAIN_SLACK=40
KEEP=$(( POST + TRAIN_MIN + TRAIN_SLACK ))
wanted 4-train || KEEP=0  # (STEPS without training: nothing to keep time for)
step 1-env "$PY" scripts/gpu_env.py "$OUT/env.json"
# --compiled: the decode step through torch.compile too (the lever for the step / floor target); printed after
# the eager figures (61 s on an H200 with the model's load), so a compile cut off by the limit costs only its own;
# the reserve keeps what the next three steps took there (56, 25 and 24 s) and a little more
step 2-sampler-b$B1 timeout $(cap 240 $(( KEEP + 150 ))) "$PY" bench/sampler.py --model "$MODEL" --batch $B1 --max-new-tokens $NEW --compiled
step 2-sampler-b$B2 timeout $(cap 120 $(( KEEP + 90 ))) "$PY" bench/sampler.py --model "$MODEL" --batch $B2 --max-new-tokens $NEW
# the fast path's greedy tokens against the CPU float32 path: first TA tokens, log-probs against the CPU's own bf16
step 2-agreement timeout $(cap 90 $(( KEEP + 30 ))) "$PY" bench/agreement.py --model "$MODEL" --batch $BA --tokens $TA --max-new-tokens $(( 2 * TA ))
step 3-eval-start fresh "$OUT/eval-start" timeout $(cap 150 $KEEP) "$PY" run.py eval --model "$MODEL" --shots $SHOTS --limit $Q --max-new-tokens $NEW --batch-size 128 --out-dir "$OUT/eval-start"
TRAIN_S=$(( $(left) - POST - TRAIN_SLACK ))  # seconds of training steps (--max-minutes takes a fraction)
if ! wanted 4-train; then
  :
elif [ "$TRAIN_S" -ge "$TRAIN_MIN" ]; then
  # (--max-minutes stops before a step that would end past it, by the last one's time; the timeout bounds a
  # first step that would run far longer)
  step 4-train timeout $(( TRAIN_S + TRAIN_SLACK )) "$PY" run.py train --model "$MODEL" --shots $SHOTS \
       --max-minutes "$(( TRAIN_S / 60 )).$(printf %03d $(( TRAIN_S % 60 * 1000 / 60 )))" --steps 100000 --eval-every 0 --save-every 100000 \
       --out-dir "$OUT/train" $( [ "${SMALL:-0}" = 1 ] && echo --prompts-per-step 1 --group-size 2 --max-new-tokens $NEW )
  STEPS=${STEPS:+$STEPS 4-eval-trained} step 4-eval-trained fresh "$OUT/eval-trained" timeout $(cap 150 $(( POST - 45 ))) "$PY" run.py eval --model "$OUT/train/final_hf" --shots $SHOTS --limit $Q --max-new-tokens $NEW --batch-size 128 --out-dir "$OUT/eval-trained"
else
  echo "4-train skipped: no time left" | tee -a "$OUT/steps.txt"
fi
# one GPU: a 1-process NCCL group must initialise and take training steps (the multi-GPU path, issue 5 sec. 3)
step 4-nccl timeout $(cap 90 60) "$PY" -m torch.distributed.run --nproc_per_node 1 run.py train --model "$MODEL" --steps 2 --prompts-per-step 1 \
     --group-size 2 --max-new-tokens 16 --eval-every 0 --out-dir "$OUT/nccl"
# (compare.json is rewritten after each strategy: a grid cut off by its limit keeps the rows it finished)
# (and majority / best-of-n at each tree row's own tokens, question by question: the issue's equal-token comparison;
# tree search at 8 simulations spent 3780 tokens a question on an H200, about 24 samples)
step 5-compare timeout $(cap 240 0) "$PY" bench/compare.py --model "$MODEL" --shots $SHOTS --limit $QM --n 1,4,8 --sims $SIMS --roots puct --max-new-tokens $NEW --batch-size 64 --out "$OUT/compare"
# diagnostics (logs named by the issue's section they belong to), each only while MINUTES has 30 s left (the
# figures above come first, and a lent machine's time is short): the CUDA-only tests (CUDA graphs against eager
# decoding, plain and shared prompts), where pytest is installed (scripts/device.sh stages it for an image without)
if ! wanted 1-cuda-tests; then
  :
elif "$PY" -c "import pytest" 2>/dev/null; then
  diag 1-cuda-tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_static_decode.py tests/test_model.py
else
  echo "1-cuda-tests skipped: no pytest here" | tee -a "$OUT/steps.txt"
fi
# the same check in float32 on the GPU (static decoding, CUDA graphs; TF32 off, as torch leaves it): without
# bf16's rounding the GPU path's greedy tokens should be the CPU's, and a departure away from a near-tie is a bug
diag 2-agreement-fp32 60 "$PY" bench/agreement.py --model "$MODEL" --dtype float32 --batch $BA --tokens $TA --max-new-tokens $(( 2 * TA ))
# masked grouped-query attention, SDPA's enable_gqa against the stacked heads the model runs: ms per call and
# whether a fused kernel takes each (decode step at batch B1, a training pass's layer)
diag 2-attention 60 "$PY" bench/attention.py --batch $B1 $( [ "${SMALL:-0}" = 1 ] && echo --prompt-len 32 --new-tokens 16 --reps 2 )
# kernels per decode step, eager and compiled (what the step time is made of)
diag 2-decode-ops 180 "$PY" bench/decode_ops.py --model "$MODEL" --batch $B1
# GRPO's rollout shape (8 prompts x 8 rows, 2-shot): each prompt's keys/values copied to its rows, or shared
diag 2-group-sampling 120 "$PY" bench/group_sampling.py --model "$MODEL" --shots $SHOTS --max-new-tokens $NEW \
     $( [ "${SMALL:-0}" = 1 ] && echo --prompts 2 --group 2 --reps 1 )
# one GRPO step under torch.profiler (run.py train --profile-step 2; the first carries one-off costs): how long the
# device was busy in the step, in how many kernels, and which operations took the time (train-profile/profile/)
diag 4-train-profile 90 "$PY" run.py train --model "$MODEL" --shots $SHOTS --steps 2 --profile-step 2 --eval-every 0 \
     --save-every 100000 --out-dir "$OUT/train-profile" $( [ "${SMALL:-0}" = 1 ] && echo --prompts-per-step 1 --group-size 2 --max-new-tokens $NEW )
# GRPO's teacher-forced passes and updates at 64 rows a micro-batch instead of 8 (3 steps): a GPU launches
# the same kernels for 8x the rows, where 8 suits a CPU's memory (summary: time/logprobs and time/update, both runs)
diag 4-train-mb64 90 "$PY" run.py train --model "$MODEL" --shots $SHOTS --steps 3 --micro-batch 64 --eval-every 0 \
     --save-every 100000 --out-dir "$OUT/train-mb64" $( [ "${SMALL:-0}" = 1 ] && echo --prompts-per-step 1 --group-size 2 --max-new-tokens $NEW )
# tree search decodes many short batches, and each decode captures its own CUDA graph: the static path (graphs)
# against the dynamic one (no graphs, finished rows dropped) on the same questions, capture costs included; a pair
# or nothing (one side alone compares nothing): the first keeps 30 s for the second
if ! { wanted 5-mcts-static || wanted 5-mcts-dynamic; }; then
  :
elif [ "$(left)" -lt 60 ]; then
  echo "5-mcts-static, 5-mcts-dynamic skipped: no time left for the pair" | tee -a "$OUT/steps.txt"
else
  for mode in static dynamic; do
    step 5-mcts-$mode fresh "$OUT/mcts-$mode" timeout $(cap 120 $([ $mode = static ] && echo 30 || echo 0)) "$PY" run.py eval --model "$MODEL" \
         --shots $SHOTS --search mcts --limit $QD --n-simulations 4 --max-new-tokens $NEW --batch-size $QD --decode $mode \
         --out-dir "$OUT/mcts-$mode"
  done
fi
# 6. summary (also rewritten after every step above)
"$PY" scripts/gpu_summary.py "$OUT" --print
