"""``slimllm distill PRUNED --teacher DENSE --data DATA --output DIR``: recovery by distillation.

Runs unchanged under ``accelerate launch -m slimllm distill ...`` or ``torchrun -m slimllm ...``.
"""

from __future__ import annotations

import argparse

from slimllm.commands.finetune import add_training_options
from slimllm.distill.config import DistillConfig
from slimllm.options import dataclass_from_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="recover a pruned model by distillation from the dense model",
        description=(
            "Train a pruned model (the student) to match the next-token distributions of the dense model it was "
            "pruned from (the teacher): KL divergence per token, optionally mixed with the next-token loss and "
            "per-layer hidden-state matching. Every weight trains by default (--lora for adapters only). "
            "Budgets: --max-steps, --max-tokens, --max-minutes. Several GPUs: accelerate launch -m slimllm distill ..."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="the student: a folder from `slimllm prune` (or any model of the teacher's family)")
    p.add_argument(
        "--teacher",
        required=True,
        help="the dense model the student was pruned from: hub id, local folder, .gguf file, or a built-in name",
    )
    p.add_argument(
        "--data",
        required=True,
        help="training text: lambada | bookcorpus | FILE.txt | FILE.jsonl of {'text'} | hf:NAME[:CONFIG], or "
        "Alpaca-format instructions (.json/.jsonl); never an evaluation set",
    )
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    add_training_options(p, DistillConfig)
    p.set_defaults(run=run)


def config_from_args(args) -> DistillConfig:
    return dataclass_from_arguments(DistillConfig, args)


def summary_lines(record: dict) -> list[str]:
    data, result, losses = record["data"], record["result"], record["losses"]
    lines = [
        f"distilled from {record['teacher']['source']} on {data['source']} ({data['train']} {data['units']}, "
        f"{data['validation']} held out): {result['global_step']} steps, {result['tokens_seen']:,} tokens in "
        f"{record['timings_s']['train'] / 60:.1f} min (stopped by {result['stopped_by']})"
    ]
    validation = losses["validation"]
    if validation:
        first, last = validation[0], validation[-1]
        lines.append(
            f"held-out KL {first['kl']:.4f} → {last['kl']:.4f}, top-1 agreement {first['top1']:.1%} → "
            f"{last['top1']:.1%}; best KL {result['best_validation_loss']:.4f} (step {result['best_step']}, kept)"
        )
    lines.append(f"saved to {record['output']['path']} (log: slimllm_distill.json, curves: slimllm_distill.png)")
    return lines


def run(args) -> int:
    from slimllm.commands.finetune import run_training
    from slimllm.distill import distill

    inputs = [args.model, args.teacher, args.data]
    return run_training("distill", distill, inputs, config_from_args(args), summary_lines, args)
