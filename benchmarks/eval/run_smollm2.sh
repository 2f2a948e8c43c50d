#!/usr/bin/env bash
# The "done when" table of slimllm eval: the bundled SmolLM2-135M and its 20% and 50% SlimLLM
# prunes (default settings), each through benchmarks/eval/run_one.sh (full WikiText-2 and PTB at
# seqlen 128, the seven tasks on seeded 500-document subsets), then one side-by-side table.
#
#   nohup benchmarks/eval/run_smollm2.sh &
#
# Writes benchmarks/eval/results/{dense,pruned20,pruned50}-smollm2-135m.{json,md} and
# benchmarks/eval/results/smollm2-135m.md. About an hour on a quiet 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
slimllm=${SLIMLLM:-.venv/bin/slimllm}
python=${PYTHON:-.venv/bin/python}
results=benchmarks/eval/results

for ratio in 20 50; do
  [ -d "out/smollm2-$ratio" ] || "$slimllm" prune smollm2-135m --ratio "0.$ratio" --output "out/smollm2-$ratio" --quiet
done
benchmarks/eval/run_one.sh smollm2-135m dense-smollm2-135m
benchmarks/eval/run_one.sh out/smollm2-20 pruned20-smollm2-135m
benchmarks/eval/run_one.sh out/smollm2-50 pruned50-smollm2-135m
"$python" benchmarks/eval/combine.py "$results"/{dense,pruned20,pruned50}-smollm2-135m.json --markdown "$results/smollm2-135m.md"
