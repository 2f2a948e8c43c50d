"""``slimllm export FOLDER --to TARGET --output PATH``: the targets are plug-ins
(:mod:`slimllm.export.targets`), each with its own options."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import MISSING, fields


def register(subparsers) -> None:
    from slimllm.export.targets import TARGETS
    from slimllm.options import add_dataclass_arguments

    p = subparsers.add_parser(
        "export",
        help="export a pruned folder to GGUF (llama.cpp) or a stock transformers folder",
        description="Export a folder written by `slimllm prune` (or a stock LLaMA/Mistral/Qwen2 folder). Targets: "
        + "; ".join(f"{name}: {target.summary}" for name, target in TARGETS.items())
        + ". An option of another target is refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", help="model folder (slimllm prune output, or a stock LLaMA-family folder)")
    p.add_argument("--to", choices=tuple(TARGETS), required=True, help="the export target")
    p.add_argument("--output", required=True, help="output file or folder, as the target writes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", default=None, help="also write the export report to this file")
    # an option several targets read is listed once, under the first; the others under their target
    owners = Counter(item.name for target in TARGETS.values() for item in fields(target.options))
    added: set[str] = set()
    for name, target in TARGETS.items():
        names = {item.name for item in fields(target.options)}
        group = {n: {"group": "options of several targets" if owners[n] > 1 else f"--to {name}"} for n in names}
        add_dataclass_arguments(p, target.options, skip=tuple(added), metadata=group)
        added |= names
    p.set_defaults(run=run)


def foreign_options(args, target_name: str) -> list[str]:
    """Options set away from their defaults that belong to other targets only."""
    from slimllm.export.targets import TARGETS

    own = {item.name for item in fields(TARGETS[target_name].options)}
    foreign = []
    for name, target in TARGETS.items():
        for item in fields(target.options):
            if item.name in own or name == target_name or not hasattr(args, item.name):
                continue
            default = item.default if item.default is not MISSING else item.default_factory()
            if getattr(args, item.name) != default:
                foreign.append(f"--{item.name.replace('_', '-')} (an option of --to {name})")
    return sorted(set(foreign))


def run(args) -> int:
    from pathlib import Path

    from slimllm.export import ExportError
    from slimllm.export.targets import TARGETS
    from slimllm.options import dataclass_from_arguments

    if not Path(args.folder).is_dir():  # what the user typed first is checked first
        print(f"slimllm export: model folder not found: {args.folder}", file=sys.stderr)
        return 2
    target = TARGETS[args.to]
    foreign = foreign_options(args, args.to)
    if foreign:
        print(f"slimllm export: --to {args.to} does not read {', '.join(foreign)}; drop it", file=sys.stderr)
        return 2
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        print(f"slimllm export: {output} already exists (pass --overwrite)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        report = target.export(args.folder, output, dataclass_from_arguments(target.options, args), args.overwrite)
    except (ExportError, ValueError) as error:
        print(f"slimllm export: {error}", file=sys.stderr)
        return 2
    data = report.to_dict() | {"seconds": time.perf_counter() - start}
    print("\n".join(target.summary_lines(data)))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0
