"""``slimllm convert FILE.gguf --output FOLDER``: a GGUF file into a safetensors folder, one tensor
in memory at a time, so that ``slimllm prune FOLDER`` can prune it out of core."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a GGUF file into a safetensors folder (one tensor in memory at a time)",
        description="Dequantise a GGUF file into a Hugging Face folder (config, safetensors shards, tokenizer) "
        "without holding the model in memory; the folder prunes out of core with `slimllm prune FOLDER`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="stored dtype")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from slimllm.io import OutputExistsError, atomic_output_dir, resolve_dtype

    gguf, output = Path(args.gguf).expanduser(), Path(args.output).expanduser()
    if gguf.suffix != ".gguf" or not gguf.is_file():
        print(f"slimllm convert: {gguf} is not a .gguf file", file=sys.stderr)
        return 2
    from slimllm.gguf_folder import gguf_to_folder

    start = time.perf_counter()
    try:
        with atomic_output_dir(output, overwrite=args.overwrite) as tmp:
            gguf_to_folder(gguf, tmp, dtype=resolve_dtype(args.dtype))
    except OutputExistsError as error:
        print(f"slimllm convert: {error}", file=sys.stderr)
        return 2
    print(f"slimllm convert: {gguf} -> {output} in {time.perf_counter() - start:.0f} s")
    return 0
