"""``slimllm finetune MODEL --data DATA --output DIR``: LoRA recovery with the paper's recipe as defaults.

Runs unchanged under ``accelerate launch -m slimllm finetune ...`` or ``torchrun -m slimllm ...``.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


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
        "--format",
        dest="data_format",
        choices=("auto", "alpaca", "text"),
        default="auto",
        help="auto: plain text for text sources, .txt and {'text'} JSONL files; Alpaca otherwise",
    )
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold the adapters into the weights and save a model folder; --no-merge saves the adapter alone",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the output and any old checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of an interrupted run")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder; None: OUTPUT.checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success")

    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=4, help="adapter rank")
    lora.add_argument("--lora-alpha", type=int, default=16, help="adapter scale numerator (scale = alpha / r)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapter input")
    lora.add_argument("--lora-targets", default=DEFAULT_TARGETS, help="comma-separated module names")

    training = p.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=2.0, help="passes over the training set")
    training.add_argument("--max-steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    training.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (linear decay)")
    training.add_argument("--batch-size", type=int, default=16, help="effective batch, over devices and accumulation")
    training.add_argument("--micro-batch-size", type=int, default=4, help="per-device batch of one forward pass")
    training.add_argument("--cutoff", type=int, default=256, help="max tokens per example; text block length")
    training.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up")
    training.add_argument("--train-on-prompt", action="store_true", help="also learn the prompt tokens")
    training.add_argument("--template", default="alpaca", help="alpaca, or a JSON file with prompt_input/no_input")
    training.add_argument("--val-size", type=int, default=2000, help="held-out examples/blocks (capped at 10%%)")
    training.add_argument("--eval-steps", type=int, default=200, help="validate and checkpoint every N steps")
    training.add_argument(
        "--best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end with the checkpoint of lowest validation loss",
    )
    training.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (the best is kept too)")
    training.add_argument("--logging-steps", type=int, default=1, help="log the training loss every N steps")
    training.add_argument("--seed", type=int, default=42, help="adapter init, data split and order")
    training.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="mixed precision; auto: bf16 (or fp16) on GPU, fp32 on CPU",
    )
    training.add_argument(
        "--dtype", default=None, help="weight dtype, trained and saved: float32 | bfloat16 | float16; None: float32"
    )
    training.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more compute")
    training.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def config_from_args(args):
    from slimllm.finetune import FinetuneConfig

    return FinetuneConfig(
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(name.strip() for name in args.lora_targets.split(",") if name.strip()),
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        cutoff=args.cutoff,
        warmup_steps=args.warmup_steps,
        train_on_prompt=args.train_on_prompt,
        template=args.template,
        data_format=args.data_format,
        val_size=args.val_size,
        eval_steps=args.eval_steps,
        best_by_validation=args.best,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        seed=args.seed,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
    )


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
    from slimllm.config import ConfigError
    from slimllm.data.sources import DataSourceError
    from slimllm.finetune import finetune
    from slimllm.io import ModelSourceError, OutputExistsError

    try:
        record = finetune(
            args.model,
            args.data,
            args.output,
            config_from_args(args),
            merge=args.merge,
            overwrite=args.overwrite,
            resume=args.resume,
            checkpoint_dir=args.checkpoint_dir,
            keep_checkpoints=args.keep_checkpoints,
            dtype=args.dtype,
            use_cpu=args.cpu,
            quiet=args.quiet,
        )
    except (ConfigError, DataSourceError, ModelSourceError, OutputExistsError) as error:
        print(f"slimllm finetune: {error}", file=sys.stderr)
        return 2
    if not args.quiet and "timings_s" in record:
        print("\n".join(summary_lines(record)))
    return 0
