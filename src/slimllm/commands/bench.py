"""``slimllm bench MODEL --ratios 0.2,0.5 --methods ... --ablations --out DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys

from slimllm.commands.eval import parse_limit, parse_names

# Issue 12: enough documents per task that the 7-task mean has a standard error near 1 point.
ACCURACY_TASK_LIMIT = 500

EXAMPLES = """\
examples:
  slimllm bench smollm2-135m --ratios 0.2,0.5 --methods slimllm,magnitude,wanda-sp,flap,taylor,random \\
      --ablations --out benchmarks/results/smollm2-135m
  slimllm bench smollm2-135m --ratios 0.5 --methods slimllm,wanda-sp,wanda-sp@eq11 --seeds 42 --out out/bench
  slimllm bench smollm2-135m --out out/bench --report-only      # rebuild results.md and plots
  slimllm bench smollm2-135m --ratios 0.2,0.5 --methods slimllm,flap,wanda-sp --seeds 42 --accuracy \
      --no-speed --out out/accuracy   # 500 documents per task, paired differences

Methods: slimllm, magnitude, wanda-sp, flap, taylor, random; NAME@uniform, NAME@eq11 (SlimLLM's
ratios) or NAME@flap (FLAP's adaptive structure) swaps the layer allocation. Finished cells are
kept in OUT/cells/ and skipped when the command is run again with the same settings.
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    from slimllm.bench.spec import DEFAULT_METHODS, DEFAULT_SEEDS, options_help

    p = subparsers.add_parser(
        "bench",
        help="compare methods, ablations, speed and memory in one resumable run",
        description="Prune one model with every method and ratio, evaluate each pruned model the same way "
        "(perplexity, zero-shot accuracy, pruning time and memory, prefill/decode speed against the dense "
        "model) and write results.json, results.md and plots.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="built-in name (smollm2-135m), model folder, .gguf file or hub id")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, *.png, cells/)")
    p.add_argument("--ratios", type=_floats, default=[0.2, 0.5], help="target ratios (default 0.2,0.5)")
    p.add_argument(
        "--methods", type=parse_names, default=list(DEFAULT_METHODS), help=f"default {','.join(DEFAULT_METHODS)}"
    )
    p.add_argument("--ablations", action="store_true", help="add SlimLLM's ablation rows (first seed)")
    p.add_argument(
        "--seeds",
        type=_ints,
        default=list(DEFAULT_SEEDS),
        help="calibration seeds of the main rows (default: %(default)s)",
    )
    p.add_argument(
        "--seed-eval",
        choices=("all", "ppl"),
        default="all",
        help="for seeds after the first: full evaluation, or perplexity only (cheaper)",
    )
    p.add_argument(
        "--options",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help=f"add SlimLLM rows beyond the paper (first seed): {options_help()}",
    )
    p.add_argument("--round-to", type=_ints, default=[], help="add 'slimllm --round-to N' rows, e.g. 8 or 8,64")
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--ppl", type=parse_names, default=["wikitext2", "ptb"], help="perplexity texts (default wikitext2,ptb)"
    )
    g.add_argument("--seqlen", type=int, default=128, help="perplexity window (default 128)")
    g.add_argument("--tasks", type=parse_names, default=None, help="zero-shot tasks, 'all' (default) or 'none'")
    g.add_argument(
        "--limit", type=parse_limit, default=None, help="first N perplexity windows and N documents per task"
    )
    g.add_argument("--ppl-limit", type=parse_limit, default=None, help="override --limit for perplexity")
    g.add_argument("--task-limit", type=parse_limit, default=None, help="override --limit for the tasks")
    g.add_argument(
        "--accuracy",
        action="store_true",
        help=f"accuracy mode: {ACCURACY_TASK_LIMIT} documents per task (all of a task with fewer), the same for "
        "every model, unless --task-limit/--limit say otherwise",
    )
    g.add_argument("--task-seed", type=int, default=0, help="seed of the document subsets (default 0)")
    g.add_argument("--task-source", choices=("auto", "offline", "hub"), default="auto")
    g.add_argument("--eval-batch-size", type=int, default=8)
    g = p.add_argument_group("pruning")
    g.add_argument("--calib", default="bookcorpus", help="calibration text (default bookcorpus)")
    g.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    g.add_argument("--calib-seqlen", type=int, default=128, help="tokens per calibration window (default 128)")
    g.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    g.add_argument("--gqa", choices=("query", "group"), default="query")
    g = p.add_argument_group("speed")
    g.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed measurements")
    g.add_argument("--speed-runs", type=int, default=3, help="runs per model; the median is reported (default 3)")
    g.add_argument("--prefill-tokens", type=int, default=512)
    g.add_argument("--decode-tokens", type=int, default=128)
    g.add_argument("--decode-prompt", type=int, default=128, help="prompt tokens before timed decoding")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads, CPU)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--budget-minutes", type=float, default=None, help="start no new cell after this many minutes")
    g.add_argument("--redo", action="store_true", help="measure every cell again")
    g.add_argument("--report-only", action="store_true", help="rebuild the outputs from the finished cells")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def spec_from_args(args):
    from slimllm.bench.spec import BenchSpec
    from slimllm.eval.task_table import TASKS

    tasks = list(TASKS) if args.tasks is None or "all" in args.tasks else args.tasks
    return BenchSpec(
        model=args.model,
        out=args.out,
        ratios=args.ratios,
        methods=args.methods,
        ablations=args.ablations,
        seeds=args.seeds,
        seed_eval=args.seed_eval,
        round_to=args.round_to,
        options=args.options,
        ppl=args.ppl,
        seqlen=args.seqlen,
        ppl_limit=args.ppl_limit if args.ppl_limit is not None else args.limit,
        tasks=tasks,
        task_limit=_task_limit(args),
        task_seed=args.task_seed,
        task_source=args.task_source,
        eval_batch_size=args.eval_batch_size,
        calib=args.calib,
        nsamples=args.nsamples,
        calib_seqlen=args.calib_seqlen,
        batch_size=args.batch_size,
        gqa=args.gqa,
        speed=args.speed,
        speed_runs=args.speed_runs,
        prefill_tokens=args.prefill_tokens,
        decode_tokens=args.decode_tokens,
        decode_prompt=args.decode_prompt,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        budget_minutes=args.budget_minutes,
    )


def _task_limit(args) -> int | None:
    for limit in (args.task_limit, args.limit):
        if limit is not None:
            return limit
    return ACCURACY_TASK_LIMIT if args.accuracy else None


def run(args) -> int:
    spec = spec_from_args(args)
    try:
        spec.validate()
        from slimllm.eval.harness import check_tasks

        check_tasks(spec.tasks)
    except ValueError as error:
        print(f"slimllm bench: {error}", file=sys.stderr)
        return 2
    from slimllm.bench.runner import Bench

    bench = Bench(spec, progress=not args.quiet, redo=args.redo, command=_command_line(args))
    results = bench.report() if args.report_only else bench.run()
    print(f"slimllm bench: wrote {spec.out}/results.json, results.md and {len(results['plots'])} plots")
    return 0


def _command_line(args) -> str:
    """The command as typed (``slimllm bench ...`` or ``python -m slimllm bench ...``), with the
    arguments of any ``@FILE`` written out (the file may change; the record must not)."""
    from slimllm.cli import expand_argument_files

    if sys.argv[1:2] == ["bench"]:
        return shlex.join(["slimllm", *expand_argument_files(sys.argv[1:])])
    return f"slimllm bench {shlex.quote(args.model)} --out {shlex.quote(args.out)} (called from Python)"
