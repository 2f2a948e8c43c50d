#!/usr/bin/env bash
# Gemma-3-270M (the built-in gemma3-270m; google/gemma-3-270m, Gemma Terms of Use): dense against
# 20% and 30% of its decoder pruned with default SlimLLM settings (--gqa query: one kv head per
# layer), WikiText-2 perplexity on the first 256 windows of 128 tokens: as slimllm eval scores every
# model (only the first window starts with <bos>) and with a <bos> before every window (--bos), which
# Gemma is trained to see first.
#   bash benchmarks/gemma3/run.sh        # results in benchmarks/gemma3/results/
set -euo pipefail
# One thread: the machine is shared, and two OpenMP threads spin-wait on each other when a core is taken.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/../.."
OUT=benchmarks/gemma3/results
mkdir -p "$OUT" out
: > "$OUT/wall_seconds.txt"
for pct in 20 30; do
  start=$(date +%s)
  .venv/bin/slimllm prune gemma3-270m --ratio "0.$pct" --ratio-of decoder --output "out/gemma3-270m-$pct" --overwrite --quiet
  echo "prune $pct% $(( $(date +%s) - start )) s (process, loading included)" >> "$OUT/wall_seconds.txt"
  cp "out/gemma3-270m-$pct/slimllm_report.json" "$OUT/prune-$pct.json"
done
start=$(date +%s)
.venv/bin/slimllm eval gemma3-270m out/gemma3-270m-20 out/gemma3-270m-30 --ppl wikitext2 --tasks none \
  --ppl-limit 256 --json "$OUT/eval.json" --markdown "$OUT/eval.md" --no-progress
echo "eval $(( $(date +%s) - start )) s" >> "$OUT/wall_seconds.txt"
start=$(date +%s)
.venv/bin/slimllm eval gemma3-270m out/gemma3-270m-20 out/gemma3-270m-30 --ppl wikitext2 --tasks none \
  --ppl-limit 256 --bos --json "$OUT/eval-bos.json" --markdown "$OUT/eval-bos.md" --no-progress
echo "eval --bos $(( $(date +%s) - start )) s" >> "$OUT/wall_seconds.txt"
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS; $(uptime)" >> "$OUT/wall_seconds.txt"
