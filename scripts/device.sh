#!/usr/bin/env bash
# The GPU run on a lent machine that takes at most 64 MiB per transfer and has no network (this project's
# `device` tool): the embedded model (98 MB) and GSM8K travel in two carried folders, then scripts/gpu_run.sh.
#
#   bash scripts/device.sh stage                 # here: split the model, add GSM8K (ignored folders .dev_model/a, b)
#   bash scripts/device.sh part1                 # there, carrying .dev_model/a: the first half to /root/m
#   bash scripts/device.sh run OUT [MINUTES]     # there, carrying .dev_model/b, within the 30 s the machine stays
#                                                # warm: join, check, install gguf, run scripts/gpu_run.sh, and
#                                                # put what comes back into OUT (the device's $OUT/run)
#   STEPS="2-sampler 1-cuda" bash scripts/device.sh run OUT2 4   # again on the still-warm machine (carrying
#                                                # .dev_model/b again): only the steps a first run did not reach
#
# `stage` needs ../shared/tools/stage_model.sh (the workplace's splitter) and GSM8K in GSM8K_DIR (default
# ../shared/data/gsm8k). Elsewhere, on a machine with the model and GSM8K at hand, run scripts/gpu_run.sh itself.
# DEVICE_MODEL_DIR (default /root/m), DEVICE_SITE_DIR (/tmp/site: unpacked wheels) and DEVICE_RUN_DIR
# ($TMPDIR or /tmp, gpu_run_<OUT's name>: the run's own folder) move what `run` writes outside OUT;
# DEVICE_CALL_S (600) is the device call's limit, before which the run is ended (a CPU rehearsal sets more).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${DEVICE_MODEL_DIR:-/root/m}
GGUF=$M/SmolLM2-135M-Instruct.Q4_1.gguf
SITE=${DEVICE_SITE_DIR:-/tmp/site}
unpack() { for w in "$@"; do if [ -f "$w" ]; then python3 -m zipfile -e "$w" "$SITE"; fi; done; }
collect() {  # collect WORK OUT: what a lent machine gives back is at most 8 files of 16 MiB, 2 folders down, while
  # WORK holds GBs in many files (checkpoints, exported models): OUT gets the summary, the step list and the
  # environment as files, and the logs, JSON, JSONL and TensorBoard files in one archive, weights left out
  # (and a profile's trace as a file of its own, where it fits)
  local work=$1 out=$2 f
  mkdir -p "$out"
  for f in summary.md steps.txt env.json; do if [ -f "$work/$f" ]; then cp "$work/$f" "$out/"; fi; done
  tar czf "$out/run.tgz" --exclude=checkpoints --exclude=final_hf --exclude='*.safetensors' --exclude='*.pt' \
      --exclude='*.trace.json.gz' -C "$(dirname "$work")" "$(basename "$work")"
  # a profiled step's Chrome trace (run.py train --profile-step) on its own, where it fits what comes back
  for f in "$work"/*/profile/*.trace.json.gz; do
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -le $(( 15 * 1024 * 1024 )) ]; then cp "$f" "$out/"; fi
  done
  if [ "$(stat -c %s "$out/run.tgz")" -gt $(( 15 * 1024 * 1024 )) ]; then  # over what comes back: text logs only
    (cd "$(dirname "$work")" && find "$(basename "$work")" \( -name checkpoints -o -name final_hf \) -prune -o -type f \
        \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name '*.txt' \) -print) \
      | tar czf "$out/run.tgz" -C "$(dirname "$work")" -T -
    echo "note: run.tgz holds the logs and JSON only (with the JSONL and TensorBoard files it was over 15 MiB)" >&2
  fi
  ls -l "$out"
}
case "${1:-}" in
  stage)
    bash ../shared/tools/stage_model.sh > /dev/null
    mkdir -p .dev_model/b/gsm8k
    cp "${GSM8K_DIR:-../shared/data/gsm8k}"/{train,test}.jsonl .dev_model/b/gsm8k/
    # pytest and its pure-Python dependencies for that image's Python 3.12 (it has none), so that the run's last
    # step can run the CUDA-only tests; not packaging, which transformers brings there (no second copy to shadow it)
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .dev_model/b/pytest pytest \
      && rm -f .dev_model/b/pytest/packaging-*.whl \
      || echo "note: pytest not staged (no PyPI here?): the run skips the CUDA-only tests" >&2
    du -sh .dev_model/a .dev_model/b
    echo "staged: carry .dev_model/a with 'part1', then .dev_model/b with 'run OUT [MINUTES]'" ;;
  part1)
    mkdir -p "$M" && cp .dev_model/a/part_aa "$M/" && ls -l "$M" ;;
  run)
    OUT=${2:?usage: scripts/device.sh run OUT [MINUTES]}
    MINUTES=${3:-8}
    [[ $MINUTES =~ ^(0|[1-9][0-9]*)$ ]] || { echo "error: MINUTES must be a whole number of minutes (0 runs each step at its 30 s floor), got '$MINUTES'" >&2; exit 2; }
    [ -f "$M/part_aa" ] || { echo "error: $M/part_aa is missing: the machine was handed back since 'part1' (it stays warm 30 s); run 'part1' again, then 'run' at once" >&2; exit 2; }
    cat "$M/part_aa" .dev_model/b/part_ab > "$GGUF"
    echo "$(cat .dev_model/b/SHA256)  $GGUF" | sha256sum -c -
    mkdir -p "$SITE"  # pure-Python wheels unpacked, no pip needed: gguf, and pytest only where the image lacks
    unpack .dev_model/b/gguf-*.whl  # it (a second copy would shadow the image's own)
    if ! python3 -c "import pytest" 2>/dev/null; then unpack .dev_model/b/pytest/*.whl; fi
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} GSM8K_DIR=$PWD/.dev_model/b/gsm8k
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # the run in its own folder, ended 40 s before the device call's limit (DEVICE_CALL_S, 600 s: MINUTES above 8
    # is cut there) for collect to copy what comes back
    WORK=${DEVICE_RUN_DIR:-${TMPDIR:-/tmp}/gpu_run_$(basename "$OUT")}  # (a second run, to another OUT, starts afresh)
    LIMIT=$(( MINUTES * 60 + 80 )); CALL=${DEVICE_CALL_S:-600}; [ "$LIMIT" -gt $(( CALL - 40 )) ] && LIMIT=$(( CALL - 40 ))
    rc=0; timeout "$LIMIT" bash scripts/gpu_run.sh "$GGUF" "$WORK" "$MINUTES" || rc=$?
    if [ "$rc" = 124 ]; then  # cut off: the step it was in says so, and the summary covers what ran
      echo "run cut off after $LIMIT s (the device call's limit)" >> "$WORK/steps.txt"
      python3 scripts/gpu_summary.py "$WORK" > /dev/null 2>&1 || true
    fi
    collect "$WORK" "$OUT"
    exit "$rc" ;;
  *)
    sed -n 2,15p "$0"; exit 2 ;;
esac
