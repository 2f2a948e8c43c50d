"""``slimllm finetune MODEL --data DATA --output DIR``: LoRA recovery with the paper's recipe as defaults.

Runs unchanged under ``accelerate launch -m slimllm finetune ...`` or ``torchrun -m slimllm ...``.
"""

from __future__ import annotations

import argparse
import sys

from slimllm.finetune.config import TRAINING, FinetuneConfig
from slimllm.options import add_dataclass_arguments, dataclass_from_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="recover a pruned model with a LoRA fine-tune",
        description=(
            "LoRA-fine-tune a model (usually one written by `slimllm prune`) on Alpaca-format instructions or "
            "plain text, then save the merged model (or the adapter). Defaults follow the paper's recipe. "
            "Multi-GPU: accelerate launch -m slimllm finetune ..."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="folder from `slimllm prune`, local Hugging Face folder, hub id, or smollm2-135m")
    p.add_argument(
        "--data",
        required=True,
        help="Alpaca hub dataset (yahma/alpaca-cleaned), local .json/.jsonl with instruction/input/output, "
        "or plain text: lambada | bookcorpus | FILE.txt | FILE.jsonl of {'text'} | hf:NAME[:CONFIG]",
    )
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold the adapters into the weights and save a model folder; --no-merge saves the adapter alone",
    )
    add_training_options(p, FinetuneConfig)
    p.set_defaults(run=run)


def add_training_options(p, config_class) -> None:
    """The options every training command shares, and one per field of ``config_class``."""
    p.add_argument("--overwrite", action="store_true", help="replace the output and any old checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of an interrupted run")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder; None: OUTPUT.checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success")
    # every setting of the training itself, with its default and help, from the config's fields
    training = add_dataclass_arguments(p, config_class)[TRAINING]
    training.add_argument(
        "--dtype", default=None, help="weight dtype, trained and saved: float32 | bfloat16 | float16; None: float32"
    )
    training.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def config_from_args(args):
    return dataclass_from_arguments(FinetuneConfig, args)


def summary_lines(record: dict) -> list[str]:
    data, result, losses = record["data"], record["result"], record["losses"]
    lines = [
        f"fine-tuned on {data['source']} ({data['format']}: {data['train']} {data['units']} for training, "
        f"{data['validation']} held out): {result['global_step']} steps in {record['timings_s']['train'] / 60:.1f} min"
    ]
    if losses["train"]:
        lines.append(f"training loss {losses['train'][0]['loss']:.4f} → {losses['train'][-1]['loss']:.4f}")
    if losses["validation"]:
        best = result["best_validation_loss"]
        best_text = f", best {best:.4f} (step {result['best_step']}, kept)" if best is not None else ""
        lines.append(
            f"validation loss {losses['validation'][0]['loss']:.4f} → {losses['validation'][-1]['loss']:.4f}{best_text}"
        )
    what = "merged model" if record["output"]["merged"] else "LoRA adapter"
    lines.append(f"saved the {what} to {record['output']['path']} (log: slimllm_finetune.json)")
    return lines


def run(args) -> int:
    from slimllm.finetune import finetune

    inputs = [args.model, args.data]
    return run_training("finetune", finetune, inputs, config_from_args(args), summary_lines, args, merge=args.merge)


def run_training(command: str, function, inputs: list, config, summary, args, **options) -> int:
    """Call ``function(*inputs, output, config, ...)`` with the options every training command shares;
    print ``summary(record)``, or a one-line error and return 2 for bad input."""
    from slimllm.config import ConfigError
    from slimllm.data.sources import DataSourceError
    from slimllm.io import ModelSourceError, OutputExistsError

    try:
        record = function(
            *inputs,
            args.output,
            config,
            overwrite=args.overwrite,
            resume=args.resume,
            checkpoint_dir=args.checkpoint_dir,
            keep_checkpoints=args.keep_checkpoints,
            dtype=args.dtype,
            use_cpu=args.cpu,
            quiet=args.quiet,
            **options,
        )
    except (ConfigError, DataSourceError, ModelSourceError, OutputExistsError) as error:
        print(f"slimllm {command}: {error}", file=sys.stderr)
        return 2
    if not args.quiet and "timings_s" in record:
        print("\n".join(summary(record)))
    return 0
