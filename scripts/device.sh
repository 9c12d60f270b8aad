#!/usr/bin/env bash
# The GPU run on a lent machine that takes at most 64 MiB per transfer and has no network (this project's
# `device` tool): the embedded model (98 MB) and GSM8K travel in two carried folders, then scripts/gpu_run.sh.
#
#   bash scripts/device.sh stage                 # here: split the model, add GSM8K (ignored folders .dev_model/a, b)
#   bash scripts/device.sh part1                 # there, carrying .dev_model/a: the first half to /root/m
#   bash scripts/device.sh run OUT [MINUTES]     # there, carrying .dev_model/b, within the 30 s the machine stays
#                                                # warm: join, check, install gguf, run scripts/gpu_run.sh
#
# `stage` needs ../shared/tools/stage_model.sh (the workplace's splitter) and GSM8K in GSM8K_DIR (default
# ../shared/data/gsm8k). Elsewhere, on a machine with the model and GSM8K at hand, run scripts/gpu_run.sh itself.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=/root/m/SmolLM2-135M-Instruct.Q4_1.gguf
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
    mkdir -p /root/m && cp .dev_model/a/part_aa /root/m/ && ls -l /root/m ;;
  run)
    OUT=${2:?usage: scripts/device.sh run OUT [MINUTES]}
    [ -f /root/m/part_aa ] || { echo "error: /root/m/part_aa is missing: the machine was handed back since 'part1' (it stays warm 30 s); run 'part1' again, then 'run' at once" >&2; exit 2; }
    cat /root/m/part_aa .dev_model/b/part_ab > "$GGUF"
    echo "$(cat .dev_model/b/SHA256)  $GGUF" | sha256sum -c -
    mkdir -p /tmp/site  # pure-Python wheels (gguf; pytest if staged) unpacked, no pip needed
    for w in .dev_model/b/gguf-*.whl .dev_model/b/pytest/*.whl; do
      if [ -f "$w" ]; then python3 -m zipfile -e "$w" /tmp/site; fi
    done
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} GSM8K_DIR=$PWD/.dev_model/b/gsm8k
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    bash scripts/gpu_run.sh "$GGUF" "$OUT" "${3:-8}" ;;
  *)
    sed -n 2,11p "$0"; exit 2 ;;
esac
