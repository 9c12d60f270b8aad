#!/usr/bin/env bash
# Sets up and runs the whole test suite (what CI runs). GSM8K comes from GSM8K_DIR (default: ../shared/data/gsm8k).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed" >&2; exit 1; }
# torch.compile's CPU code generation (the compiled decode step's tests) needs a C++ compiler
if ! command -v g++ > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && apt-get install -y -qq g++ > /dev/null || { echo "could not install g++" >&2; exit 1; }
  else
    echo "g++ not found: torch.compile's tests need a C++ compiler (e.g. apt-get install g++)" >&2; exit 1
  fi
fi
export GSM8K_DIR="${GSM8K_DIR:-../shared/data/gsm8k}"
PY=${PYTHON:-python3}
"$PY" -m pytest -q tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
