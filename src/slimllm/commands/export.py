"""``slimllm export FOLDER --to gguf|hf --output PATH``."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a pruned folder to GGUF (llama.cpp) or a stock transformers folder",
        description="Export a folder written by `slimllm prune` (or a stock LLaMA/Mistral/Qwen2 folder): "
        "--to gguf writes a llama.cpp file (architecture deci, per-layer shapes); --to hf writes a folder that "
        "stock transformers loads without slimllm or trust_remote_code (zero-padded unless every layer has one shape).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", help="model folder (slimllm prune output, or a stock LLaMA-family folder)")
    p.add_argument("--to", choices=("gguf", "hf"), required=True, help="output format")
    p.add_argument("--output", required=True, help="output .gguf file (gguf) or folder (hf)")
    p.add_argument(
        "--quant",
        default="f16",
        help="gguf: f32 | f16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k (quantised types use llama.cpp's quantiser)",
    )
    p.add_argument("--tokenizer-pre", default=None, help="gguf: llama.cpp pre-tokenizer name, if not recognised")
    p.add_argument("--threads", type=int, default=None, help="gguf: quantisation threads")
    p.add_argument(
        "--pad-ffn",
        type=int,
        default=32,
        help="gguf: zero-pad FFN widths to a multiple of N (exact; odd widths slow llama.cpp's matmuls and make "
        "ffn_down fall back to F16 in Q8_0; 256 for K-quants; 1 = no padding)",
    )
    p.add_argument("--dtype", default=None, help="hf: float32 | bfloat16 | float16 (default float32)")
    p.add_argument(
        "--ignore-sliding-window",
        action="store_true",
        help="write a model without sliding-window attention, context capped at the window (exact up to it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", default=None, help="also write the export report to this file")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from slimllm.export import ExportError, export_gguf, export_hf

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        print(f"slimllm export: {output} already exists (pass --overwrite)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        if args.to == "gguf":
            report = export_gguf(
                args.folder,
                output,
                quant=args.quant,
                tokenizer_pre=args.tokenizer_pre,
                ignore_sliding_window=args.ignore_sliding_window,
                threads=args.threads,
                pad_ffn=args.pad_ffn,
            )
        else:
            report = export_hf(
                args.folder,
                output,
                overwrite=args.overwrite,
                dtype=args.dtype,
                ignore_sliding_window=args.ignore_sliding_window,
            )
    except (ExportError, ValueError) as error:
        print(f"slimllm export: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    data = report.to_dict() | {"seconds": seconds}
    if args.to == "gguf":
        _print_gguf(data)
    else:
        _print_hf(data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _print_gguf(report: dict) -> None:
    heads, kv, ffn = report["head_count"], report["head_count_kv"], report["feed_forward_length"]
    print(f"wrote {report['output']} ({report['file_bytes'] / 2**20:.1f} MiB, {report['quant']}, arch deci)")
    print(f"  tokenizer: {report['tokenizer']}")
    print(f"  heads per layer:    {heads}")
    print(f"  kv heads per layer: {kv}")
    print(f"  FFN width per layer: {ffn}")
    print(f"  decoder parameters: {report['written_decoder_params']:,} written for {report['source_decoder_params']:,}")
    for note in report["notes"]:
        print(f"  note: {note}")
    fallbacks = report["fallbacks"]
    if fallbacks:
        block = 256 if "_k" in report["quant"] else 32
        print(
            f"  {len(fallbacks)} matrices have rows that are not a multiple of the {report['quant']} block ({block}) "
            "and were stored in a wider type by llama.cpp:"
        )
        for row in fallbacks:
            print(f"    {row['tensor']}: row length {row['row_length']} -> {row['type']}")
        pruned = [row for row in fallbacks if row["row_length"] != report["hidden_size"]]
        if pruned:
            print(
                f"  {len(pruned)} of them have pruned widths: export with --pad-ffn {block} or prune with "
                f"--round-to {block} to avoid it; rows as long as the hidden size cannot be helped by pruning"
            )


def _print_hf(report: dict) -> None:
    print(
        f"wrote {report['output']}: {report['architecture']}, {report['num_attention_heads']} heads / "
        f"{report['num_key_value_heads']} kv heads, FFN {report['intermediate_size']}, "
        f"{report['written_params']:,} parameters"
    )
    if report["exact_shape"]:
        print("  every layer has the same shape: exact and compact")
    for note in report["notes"]:
        print(f"  note: {note}")
