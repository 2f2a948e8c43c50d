"""The transformers Trainer set up for the recovery recipe, plus the loss log and the progress bar.

Distribution is the Trainer's: under ``accelerate launch`` or ``torchrun`` each process trains on
its share of every batch (DDP); nothing here depends on the number of processes except the
gradient-accumulation count that keeps the effective batch at ``batch_size``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from slimllm.finetune.config import FinetuneConfig
from slimllm.finetune.data import IGNORE_INDEX, FinetuneData
from slimllm.runtime import write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"


def world_size() -> int:
    """Processes in this run: torchrun and accelerate launch both export WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6 knows CUDA, MPS, XPU, ...
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def resolve_precision(precision: str, use_cpu: bool = False) -> str:
    """``auto``: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def training_arguments(
    config: FinetuneConfig,
    work_dir: str | Path,
    *,
    has_validation: bool,
    resuming: bool = False,
    quiet: bool = False,
    use_cpu: bool = False,
    best_metric: str = "eval_loss",
    **overrides,
):
    """The recipe as TrainingArguments: validate and checkpoint every ``eval_steps``, keep the
    checkpoint of lowest ``best_metric``; ``overrides`` are further TrainingArguments values."""
    from transformers import TrainingArguments

    # Without an accelerator the Trainer must be told it runs on CPU, or several processes
    # (torchrun --nproc_per_node N) would each train alone instead of as one DDP group (gloo).
    use_cpu = use_cpu or not accelerator_available()
    precision = resolve_precision(config.precision, use_cpu)
    best = has_validation and config.best_by_validation
    values = dict(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps(world_size()),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=config.eval_steps,
        # The loss before any tuning anchors the log; a resumed run already has it.
        eval_on_start=has_validation and not resuming,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=best,
        metric_for_best_model=best_metric if best else None,
        greater_is_better=False if best else None,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **{_checkpointing_argument(TrainingArguments): config.gradient_checkpointing},
        label_names=["labels"],
        # Every LoRA parameter takes part in every step; DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        report_to="none",
        disable_tqdm=quiet,
        use_cpu=use_cpu,
        dataloader_pin_memory=torch.cuda.is_available() and not use_cpu,
    )
    return TrainingArguments(**{**values, **overrides})


def padding_tokenizer(tokenizer):
    """The tokenizer, or a copy that pads on the right with a pad token.

    Right padding keeps every example's real tokens at positions 0..n-1 (the model numbers
    positions from 0 regardless of the mask); a copy leaves the tokenizer that gets saved as it was.
    """
    if tokenizer.pad_token_id is not None and tokenizer.padding_side == "right":
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked and carry no label
    tokenizer.padding_side = "right"
    return tokenizer


TRAIN_LOG_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm")
EVAL_LOG_PREFIX = "eval_"
EVAL_LOG_SKIP = ("runtime", "samples_per_second", "steps_per_second")


def loss_history(log_history: list[dict], train_keys: tuple[str, ...] = TRAIN_LOG_KEYS) -> dict[str, list[dict]]:
    """Train and validation records per logged step, from the Trainer's log history: ``train_keys``
    of each training log, and every metric of each validation (``loss`` for ``eval_loss``)."""
    train, validation = [], []
    for entry in log_history:
        if "loss" in entry:
            train.append({key: entry[key] for key in train_keys if key in entry})
        elif "eval_loss" in entry:
            metrics = {
                key.removeprefix(EVAL_LOG_PREFIX): value
                for key, value in entry.items()
                if key.startswith(EVAL_LOG_PREFIX) and not key.endswith(EVAL_LOG_SKIP)
            }
            validation.append({"step": entry["step"], "epoch": entry.get("epoch"), **metrics})
    return {"train": train, "validation": validation}


@dataclass(frozen=True)
class LogView:
    """What a run's JSON log keeps of each training log (``train_keys``), and which values its
    progress display shows: ``shown`` maps log keys to labels (training and validation alike)."""

    train_keys: tuple[str, ...] = TRAIN_LOG_KEYS
    shown: tuple[tuple[str, str], ...] = (("loss", "loss"), ("eval_loss", "validation loss"))

    def text(self, logs: dict, prefix: str = "") -> dict[str, str]:
        return {
            label: f"{logs[key]:.4g}" if isinstance(logs[key], float) else str(logs[key])
            for key, label in self.shown
            if key in logs and key.startswith(prefix)
        }


class LossLogCallback(TrainerCallback):
    """Keeps a JSON log (``record`` + losses so far) up to date on the main process.

    The whole log is rewritten, so on fast GPUs it is written at most every ``interval`` seconds,
    and always after a validation and at the end.
    """

    def __init__(self, path: str | Path, record: dict, interval: float = 10.0, view: LogView = LogView()):
        self.path = Path(path)
        self.record = record
        self.interval = interval
        self.view = view
        self.last_write = float("-inf")

    def write(self, state) -> None:
        progress = {"status": "running", "step": state.global_step, "max_steps": state.max_steps}
        losses = loss_history(state.log_history, self.view.train_keys)
        write_json_atomic(self.path, {**self.record, **progress, "losses": losses})
        self.last_write = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        due = "eval_loss" in (logs or {}) or time.monotonic() - self.last_write >= self.interval
        if state.is_world_process_zero and due:
            self.write(state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state)


class LossProgressCallback(ProgressCallback):
    """The Trainer's progress bar with the latest values beside it, instead of one dict per log."""

    def __init__(self, view: LogView = LogView()):
        super().__init__()
        self.view = view
        self.postfix: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        self.postfix.update(self.view.text(logs))
        if "eval_loss" in logs:
            shown = ", ".join(f"{label} {value}" for label, value in self.view.text(logs, "eval_").items())
            self.training_bar.write(f"step {state.global_step}: {shown}")
        self.training_bar.set_postfix(self.postfix, refresh=False)


class LineProgressCallback(TrainerCallback):
    """For logs that are not a terminal: one line per validation and one at the end, no bar."""

    def __init__(self, view: LogView = LogView(), stream=None):
        self.view = view
        self.stream = stream or sys.stderr
        self.latest: dict[str, str] = {}
        self.started = time.monotonic()

    def _line(self, state, text: str) -> None:
        minutes = (time.monotonic() - self.started) / 60
        print(f"step {state.global_step}/{state.max_steps} ({minutes:.1f} min): {text}", file=self.stream, flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            shown = self.view.text(logs, "eval_")
            self._line(state, ", ".join(f"{label} {value}" for label, value in shown.items()))
        else:
            self.latest.update(self.view.text(logs))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._line(state, "training done; " + ", ".join(f"{k} {v}" for k, v in self.latest.items()))


def progress_callback(quiet: bool, view: LogView = LogView()) -> TrainerCallback | None:
    """A bar on a terminal, lines in a log, nothing when ``quiet``."""
    if quiet:
        return None
    return LossProgressCallback(view) if sys.stderr.isatty() else LineProgressCallback(view)


def padding_collator(tokenizer):
    """Right-pads ``input_ids``/``attention_mask``/``labels`` (labels with IGNORE_INDEX) to a multiple of 8."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        padding_tokenizer(tokenizer), padding=True, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=8
    )


def build_trainer(
    peft_model,
    tokenizer,
    data: FinetuneData,
    config: FinetuneConfig,
    work_dir: str | Path,
    *,
    log_path: str | Path | None = None,
    record: dict | None = None,
    resuming: bool = False,
    quiet: bool = False,
    use_cpu: bool = False,
    trainer_class=None,
    view: LogView = LogView(),
    arguments: dict | None = None,
    collator=None,
    callbacks: tuple = (),
    **trainer_kwargs,
):
    """A Trainer (``trainer_class``, default transformers') over ``data`` that checkpoints into
    ``work_dir`` and keeps the JSON loss log; ``arguments`` are further TrainingArguments values."""
    from transformers import Trainer

    args = training_arguments(
        config,
        work_dir,
        has_validation=data.validation is not None,
        resuming=resuming,
        quiet=quiet,
        use_cpu=use_cpu,
        **(arguments or {}),
    )
    collator = collator or padding_collator(tokenizer)
    log = [LossLogCallback(log_path, record or {}, view=view)] if log_path is not None else []
    trainer = (trainer_class or Trainer)(
        model=peft_model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=collator,
        callbacks=[*log, *callbacks],
        **trainer_kwargs,
    )
    # Quiet runs print nothing per step (the JSON log has every loss); others get a bar or lines.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    progress = progress_callback(quiet, view)
    if progress is not None:
        trainer.add_callback(progress)
    return trainer


def train(trainer, resume_from: str | None = None, view: LogView = LogView()) -> dict:
    """Run the Trainer; return the step count, best checkpoint and losses."""
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    state = trainer.state
    best = state.best_model_checkpoint
    return {
        "global_step": state.global_step,
        "epoch": state.epoch,
        "train_loss_mean": output.training_loss,
        # The checkpoint folder goes away after the run; its step number is what stays meaningful.
        "best_step": int(Path(best).name.removeprefix(CHECKPOINT_PREFIX)) if best else None,
        "best_validation_loss": state.best_metric,
        "train_seconds": time.perf_counter() - start,
        "losses": loss_history(state.log_history, view.train_keys),
    }


def _checkpointing_argument(training_arguments: type) -> str:
    """transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    fields = getattr(training_arguments, "__dataclass_fields__", {})
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
