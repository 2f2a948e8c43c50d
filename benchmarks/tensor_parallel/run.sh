#!/usr/bin/env bash
# The perplexity cost of --tensor-parallel: SmolLM2-135M at 20%, whole key/value groups, without and
# with the constraint (its 3 key/value groups over 9 heads split only over 3 devices: with N=3 no
# group can go, so the whole target comes from the FFN, in widths that are multiples of 3).
# WikiText-2, first 256 windows of 128 tokens. Results: benchmarks/tensor_parallel/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/tensor-parallel}
mkdir -p "$OUT"
for row in "group:--gqa group" "group-tp3:--gqa group --tensor-parallel 3" "query:--gqa query"; do
  name=${row%%:*}; flags=${row#*:}
  # shellcheck disable=SC2086  # flags is a list of options
  [ -f "$OUT/$name/config.json" ] || slimllm prune smollm2-135m --ratio 0.2 $flags --quiet --output "$OUT/$name"
done
slimllm eval smollm2-135m "$OUT/group" "$OUT/group-tp3" "$OUT/query" --ppl wikitext2 --tasks none \
  --ppl-limit 256 --json "$OUT/eval.json" --markdown benchmarks/tensor_parallel/results.md --no-progress
