#!/usr/bin/env bash
# The SmolLM2-135M tables of docs/results.md: every method and ablation at 20% and 50% of the
# parameters, on this machine's CPU, with the seeded subsets stated in results.md.
#
#   nohup benchmarks/bench_smollm2.sh &        # BUDGET=60 (minutes per process) by default
#
# One `slimllm bench` per ratio, in parallel (one torch thread each), sharing one output folder;
# the second starts once the dense model's cell is written, so the dense model is measured once.
# A last --report-only call merges all finished cells into results.json / results.md / *.png.
# Rerunning resumes: finished cells are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

slimllm=${SLIMLLM:-.venv/bin/slimllm}
out=benchmarks/results/smollm2-135m
logs=out/bench-logs
budget=${BUDGET:-60}
mkdir -p "$out" "$logs"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

common=(@benchmarks/specs/smollm2-135m.args --quiet)  # the settings, and --out "$out"

start=$(date +%s)
"$slimllm" bench "${common[@]}" --ratios 0.2 --budget-minutes "$budget" >"$logs/ratio-0.2.log" 2>&1 &
first=$!
while [ ! -f "$out/cells/dense.json" ] && kill -0 "$first" 2>/dev/null; do sleep 10; done
waited=$(( ($(date +%s) - start) / 60 ))
"$slimllm" bench "${common[@]}" --ratios 0.5 --budget-minutes "$(( budget > waited ? budget - waited : 1 ))" \
  >"$logs/ratio-0.5.log" 2>&1 &
wait
"$slimllm" bench "${common[@]}" --ratios 0.2,0.5 --report-only >>"$logs/report.log" 2>&1
echo "done in $(( ($(date +%s) - start) / 60 )) min: $out/results.md"
