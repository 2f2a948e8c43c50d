"""``slimllm prune MODEL --ratio R --output DIR``."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    from slimllm.methods import method_help

    p = subparsers.add_parser(
        "prune",
        help="prune a model with SlimLLM and save it",
        description="Prune a decoder-only model (hub id, local folder, .gguf file, or the built-in smollm2-135m "
        "or gemma3-270m) and save it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="hub id, local folder, .gguf file, or a built-in name: smollm2-135m, gemma3-270m")
    p.add_argument("--ratio", type=float, required=True, help="fraction of parameters to remove, in (0, 1)")
    p.add_argument(
        "--ratio-of",
        choices=("all", "decoder"),
        default="all",
        help="count the ratio against all parameters (the paper) or the decoder layers' only",
    )
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--method",
        default="slimllm",
        help=f"{method_help()}. NAME@slimllm, NAME@uniform or NAME@flap overrides the layer ratios the method "
        "was published with",
    )
    p.add_argument(
        "--calib", default="bookcorpus", help="bookcorpus | lambada | FILE.txt | FILE.jsonl | hf:NAME[:CONFIG]"
    )
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--alpha", type=float, default=None, help="Eq. 11 temperature (default: 10 at 20%%, 7 at 50%%)")
    p.add_argument("--layers", type=int, default=None, help="number of layers pruned, L_p (default: the paper's share)")
    p.add_argument("--max-layer-ratio", type=float, default=0.9, help="cap on any layer's ratio")
    p.add_argument("--gqa", choices=("query", "group"), default="query", help="prune query heads or whole kv groups")
    p.add_argument("--device", default=None, help="compute device for the current layer (e.g. cuda); default: CPU")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--round-to", type=int, default=1, help="keep FFN widths multiples of N")
    p.add_argument("--no-greedy", dest="greedy", action="store_false", help="ablation: no greedy head search")
    p.add_argument("--no-feature-space", dest="feature_space", action="store_false", help="ablation: plain norms")
    p.add_argument("--no-regression", dest="regression", action="store_false", help="ablation: no output regression")
    p.add_argument("--uniform", action="store_true", help="ablation: one ratio in every layer")
    p.add_argument("--keep-lowest", type=float, default=0.01, help="spare the lowest FRACTION of channels (code quirk)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def config_from_args(args):
    from slimllm.config import PruneConfig

    return PruneConfig(
        ratio=args.ratio,
        ratio_of=args.ratio_of,
        method=args.method,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        alpha=args.alpha,
        layers=args.layers,
        max_layer_ratio=args.max_layer_ratio,
        gqa=args.gqa,
        greedy=args.greedy,
        feature_space=args.feature_space,
        regression=args.regression,
        uniform=args.uniform,
        keep_lowest=args.keep_lowest,
        round_to=args.round_to,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )


def print_summary(report: dict, output: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"SlimLLM pruning → {output}", show_lines=False)
    for name in ("layer", "cosine", "ratio", "heads", "kv", "channels", "params", "removed"):
        table.add_column(name, justify="right")
    for row in report["layers"]:
        table.add_row(
            str(row["layer"]),
            f"{row['cosine']:.4f}",
            f"{row['ratio']:.3f}",
            str(row["heads"]),
            str(row["kv_heads"]),
            str(row["channels"]),
            f"{row['params_after']:,}",
            f"{row['realised_ratio']:.1%}",
        )
    console.print(table)
    params, seconds = report["params"], report["seconds"]
    console.print(
        f"parameters: {params['dense']:,} → {params['pruned']:,}   "
        f"realised ratio [bold]{params['realised_ratio']:.4f}[/bold] (target {params['target_ratio']:.4f} of "
        f"{params.get('ratio_of', 'all')} parameters)   "
        f"pruning time {seconds['total']:.1f} s"
    )


def run(args) -> int:
    from slimllm.config import ConfigError

    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2

    from pathlib import Path

    import slimllm
    from slimllm.io import ModelSourceError, OutputExistsError

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        print(f"slimllm prune: output folder {output} already exists (pass --overwrite)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        model, tokenizer = slimllm.load(args.model, dtype=args.dtype)
    except (ModelSourceError, ValueError) as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - start
    try:
        pruned, plan = slimllm.prune(model, tokenizer, config, progress=not args.quiet)
    except ValueError as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2
    plan.source = str(args.model)
    plan.report["model"] = str(args.model)
    plan.report["seconds"]["load_model"] = load_seconds
    try:
        slimllm.save(pruned, tokenizer, plan, output, overwrite=args.overwrite, started=start)
    except OutputExistsError as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_summary(plan.report, str(output))
    return 0
