"""``slimllm prune MODEL --ratio R --output DIR``."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import fields


def register(subparsers) -> argparse.ArgumentParser:
    from slimllm.config import PRESETS, PruneConfig
    from slimllm.io import BUILTIN_MODELS
    from slimllm.methods import REGISTRY, allocation_help, method_help, option_names, option_readers, recovery_help
    from slimllm.options import add_dataclass_arguments

    recovery_readers = " and ".join(name for name, spec in REGISTRY.items() if "recovery" in option_names(spec.options))
    p = subparsers.add_parser(
        "prune",
        help="prune a model with SlimLLM and save it",
        description="Prune a decoder-only model (hub id, local folder, .gguf file, or a built-in: "
        f"{', '.join(BUILTIN_MODELS)}) and save it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"methods: {method_help()}. NAME@ALLOCATION overrides the layer ratios the method was published "
        f"with: {allocation_help()}. recoveries (--recovery, for {recovery_readers}): {recovery_help()}. An option "
        "that the chosen method and allocation do not read is refused.",
    )
    p.add_argument("model", help=f"hub id, local folder, .gguf file, or a built-in name: {', '.join(BUILTIN_MODELS)}")
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named set of settings (paper: the default; best: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in PRESETS["best"].items())
        + "); options given on the command line override it",
    )
    add_dataclass_arguments(p, PruneConfig, skip=("options",))
    plug_in = plug_in_options_class()
    plug_in_metadata = {
        item.name: {
            "group": _PLUG_IN_GROUP_TITLE,
            "help": f"{item.metadata['help']}; read by {option_readers(item.name)}",
        }
        for item in fields(plug_in)
    }
    add_dataclass_arguments(p, plug_in, metadata=plug_in_metadata)
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole model before pruning (the default for a .gguf file, a hub id, taylor and @search); "
        "otherwise a built-in or local folder is pruned out of core: one decoder layer in memory at a time",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted out-of-core prune (same command) from its last finished layer; "
        "its work is kept in .OUTPUT.slimllm-work beside the output until the output is written",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


_PLUG_IN_GROUP_TITLE = "options of the methods and allocations (refused by those that do not read them)"


def plug_in_options_class() -> type:
    """One dataclass holding every registered plug-in option (:func:`slimllm.methods.plug_in_options`),
    for the command line: ``--alpha`` is listed once however many allocations read it."""
    from dataclasses import field, make_dataclass

    from slimllm.methods import plug_in_options

    return make_dataclass(
        "PlugInOptions",
        [(item.name, item.type, field(default=item.default, metadata=item.metadata)) for item in plug_in_options()],
    )


def options_markdown() -> str:
    """``slimllm prune``'s options as the markdown table docs/usage.md shows (generated, tested)."""
    from slimllm.methods import ALLOCATION_SPECS, RECOVERIES, REGISTRY, available_methods
    from slimllm.options import markdown_table

    prune = register(argparse.ArgumentParser().add_subparsers())
    plugins = ["| plug-in | name | what it is | its options |", "|---|---|---|---|"]
    rows = [
        ("method (`--method NAME`)", name, REGISTRY[name].summary, REGISTRY[name].options)
        for name in available_methods()
    ]
    rows += [
        ("allocation (`--method NAME@ALLOCATION`)", spec.name, spec.summary, spec.options)
        for spec in ALLOCATION_SPECS.values()
    ]
    rows += [("recovery (`--recovery`)", name, recovery.summary, None) for name, recovery in RECOVERIES.items()]
    for kind, name, summary, options in rows:
        flags = ", ".join(f"`{_flag(item)}`" for item in fields(options)) if options else ""
        plugins.append(f"| {kind} | `{name}` | {summary.replace('|', chr(92) + '|')} | {flags or '–'} |")
    return markdown_table(prune) + "\n\n" + "\n".join(plugins)


def _flag(item) -> str:
    """How the command line spells option ``item``: ``--no-NAME`` for a switch that is on by default."""
    name = item.name.replace("_", "-")
    return f"--no-{name}" if item.default is True else f"--{name}"


def config_from_args(args):
    """The :class:`PruneConfig` of a command line: its fields from their options (a preset's value
    where one was not given), ``options`` from the plug-in options given (or set by the preset)."""
    from slimllm.config import PRESETS, PruneConfig
    from slimllm.methods import plug_in_options
    from slimllm.options import given_fields

    preset = PRESETS[args.preset] if getattr(args, "preset", None) else {}
    given = given_fields(args)
    settings = {item.name: getattr(args, item.name) for item in fields(PruneConfig) if hasattr(args, item.name)}
    settings.update({name: value for name, value in preset.items() if name not in given})
    for item in plug_in_options():
        value = getattr(args, item.name)
        if item.name in given or value != item.default:  # a boolean flag is given when it changed the value
            settings[item.name] = value
    return PruneConfig.from_dict(settings)


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


def out_of_core_possible(source: str, config) -> bool:
    """Whether ``source`` can be pruned with its layers read from disk: a built-in or a local
    safetensors folder, and a method that does not need the whole model at once."""
    from pathlib import Path

    from slimllm.io import BUILTIN_MODELS
    from slimllm.methods import build_method

    folder = Path(source)
    if source not in BUILTIN_MODELS and not (folder.is_dir() and any(folder.glob("*.safetensors"))):
        return False
    return not build_method(config).whole_model


def run(args) -> int:
    from slimllm.io import check_model_source
    from slimllm.methods import build_method

    try:
        check_model_source(args.model)  # what the user typed first is checked first
        config = config_from_args(args)
        build_method(config)  # the method, its allocation and its options agree, before any loading
    except ValueError as error:  # ConfigError included
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2

    from pathlib import Path

    import torch

    output = Path(args.output)
    if args.resume and args.in_memory:
        print("slimllm prune: --resume continues an out-of-core prune; drop --in-memory", file=sys.stderr)
        return 2
    if output.exists() and not args.overwrite:
        print(f"slimllm prune: output folder {output} already exists (pass --overwrite)", file=sys.stderr)
        return 2
    from slimllm import parallel

    device = parallel.init_from_environment(config.device)  # under torchrun: join the other processes
    if device is not None and device.type == "cuda":
        config.device = str(device)
    try:
        return _prune_and_save(args, config, output)
    finally:
        if parallel.world_size() > 1:
            torch.distributed.destroy_process_group()


def _prune_and_save(args, config, output) -> int:
    import slimllm
    from slimllm import parallel
    from slimllm.io import ModelSourceError, OutputExistsError

    main_process = parallel.is_main_process()
    start = time.perf_counter()
    out_of_core = not args.in_memory and out_of_core_possible(args.model, config)
    try:
        model, tokenizer = slimllm.load(args.model, dtype=args.dtype, on_disk=out_of_core)
    except (ModelSourceError, ValueError) as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - start
    work_dir = output.parent / f".{output.name}.slimllm-work"  # the run's record, until the output is written
    if args.resume and not out_of_core:
        print(f"slimllm prune: --resume: {args.model} is pruned in memory, which cannot resume", file=sys.stderr)
        return 2
    if work_dir.exists() and not args.resume and main_process:
        print(f"note: starting over; the interrupted run's work in {work_dir} is discarded (--resume continues it)")
    try:
        pruned, plan = slimllm.prune(
            model, tokenizer, config, progress=not args.quiet, work_dir=work_dir if out_of_core else None,
            resume=args.resume,
        )  # fmt: skip
        if not main_process:  # the first process writes the output
            return 0
        plan.source = str(args.model)
        plan.report["model"] = str(args.model)
        plan.report["out_of_core"] = out_of_core
        plan.report["processes"] = parallel.world_size()
        plan.report["seconds"]["load_model"] = load_seconds
        slimllm.save(pruned, tokenizer, plan, output, overwrite=args.overwrite, started=start)
    except (OutputExistsError, ValueError) as error:
        print(f"slimllm prune: {error}", file=sys.stderr)
        return 2
    shutil.rmtree(work_dir, ignore_errors=True)
    if not args.quiet:
        print_summary(plan.report, str(output))
    return 0
