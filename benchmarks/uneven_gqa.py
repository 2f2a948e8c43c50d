"""What running uneven query-to-kv maps costs, against rewriting them as regular GQA.

`--gqa query` leaves layers where key/value heads serve different numbers of query heads. slimllm
runs them as they are: the stock attention of the family, with one registered attention function
that gathers each query head's key/value head (the KV cache keeps the layer's own heads). The
alternative is to rewrite each such layer as regular GQA by duplicating key/value heads (what the
GGUF export must do for llama.cpp): more parameters and a larger KV cache, no gather.

This script builds the rewritten model from a pruned folder, checks both give the same logits, and
times both (batch 1: prefill of 512 tokens, 128 decoded tokens with the KV cache; the two models
alternate, median of --runs):

    python benchmarks/uneven_gqa.py out/smollm2-20 --runs 5 --out benchmarks/results/uneven-gqa
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import torch

import slimllm
from slimllm.bench.measure import compare_speed
from slimllm.modeling import regular_group_size
from slimllm.models import adapter_for
from slimllm.prune import count_parameters
from slimllm.surgery import slice_linear


def regularised(model):
    """A copy whose uneven layers are regular GQA: each kv head duplicated to serve groups of g
    consecutive query heads, g the largest size that divides every kv head's query count."""
    model = copy.deepcopy(model)
    adapter = adapter_for(model.config)
    rewritten = 0
    for layer in adapter.layers(model):
        parts = adapter.attention(layer)
        if regular_group_size(parts.query_to_kv) is not None:
            continue
        counts = [parts.query_to_kv.count(kv) for kv in range(parts.num_kv_heads)]
        group = math.gcd(*counts)
        slots = [kv for kv, count in enumerate(counts) for _ in range(count // group)]
        rows = [kv * parts.head_dim + i for kv in slots for i in range(parts.head_dim)]
        adapter.set_attention(
            layer,
            k_proj=slice_linear(parts.k_proj, rows=rows),
            v_proj=slice_linear(parts.v_proj, rows=rows),
            query_to_kv=[i // group for i in range(parts.num_heads)],
        )
        rewritten += 1
    return model, rewritten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a folder written by slimllm prune (with --gqa query)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/uneven-gqa")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    gathered, _ = slimllm.load(args.folder)
    duplicated, rewritten = regularised(gathered)
    ids = torch.randint(0, gathered.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((gathered(ids).logits - duplicated(ids).logits).abs().max())
    # "dense" is the rewritten model here: speed-ups > 1 mean the gather is faster than duplication
    speed = compare_speed(duplicated, gathered, vocab_size=gathered.config.vocab_size, runs=args.runs)
    result = {
        "folder": args.folder,
        "uneven_layers": rewritten,
        "layers": len(adapter_for(gathered.config).layers(gathered)),
        "params_gather": count_parameters(gathered),
        "params_duplicated": count_parameters(duplicated),
        "max_abs_logit_diff": diff,
        "prefill_s": {"gather": speed["pruned"]["prefill_s"], "duplicated": speed["dense"]["prefill_s"]},
        "decode_tokens_per_s": {
            "gather": speed["pruned"]["decode_tokens_per_s"],
            "duplicated": speed["dense"]["decode_tokens_per_s"],
        },
        "gather_speedup": {"prefill": speed["prefill_speedup"], "decode": speed["decode_speedup"]},
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "wall_s": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    extra = result["params_duplicated"] - result["params_gather"]
    lines = [
        f"Uneven GQA on `{args.folder}`: {rewritten} of {result['layers']} layers uneven.",
        "",
        "| | parameters | prefill 512 tok (s) | decode tok/s |",
        "|---|---:|---:|---:|",
        f"| gather (slimllm) | {result['params_gather']:,} | {result['prefill_s']['gather']:.3f} | "
        f"{result['decode_tokens_per_s']['gather']:.1f} |",
        f"| duplicated kv heads | {result['params_duplicated']:,} (+{extra:,}) | "
        f"{result['prefill_s']['duplicated']:.3f} | {result['decode_tokens_per_s']['duplicated']:.1f} |",
        "",
        f"Same logits (max |diff| {diff:.1e}); median of {args.runs} alternating runs, "
        f"{result['threads']} threads; {result['wall_s']:.0f} s in all.",
    ]
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
