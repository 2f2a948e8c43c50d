"""Folder to folder: train a pruned student on its dense teacher's next-token distributions, save it.

As for ``slimllm finetune``: checkpoints go to a work folder beside the output
(``OUTPUT.checkpoints`` unless named), which survives an interruption so ``resume=True`` continues
it and holds ``slimllm_distill_run.json`` (what a resumed run must match: student, teacher, data,
settings, process count), the live ``slimllm_distill.json`` log and, with ``teacher_topk``, the
teacher's cached targets. The output folder appears only when complete, and is the same kind of
folder as its input: a pruned model reloads, evaluates and exports exactly as one from
``slimllm prune``, with ``slimllm_distill.json`` (settings, data, per-step KL, tokens, time and
memory) and ``slimllm_distill.png`` (the loss curves) beside the weights. The inputs are only read.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import sys
from pathlib import Path

import torch

from slimllm.config import ConfigError
from slimllm.data.sources import DataSourceError
from slimllm.distill.config import DistillConfig
from slimllm.distill.teacher import CachedTeacher, LiveTeacher, build_topk_cache
from slimllm.distill.trainer import BEST_METRIC, EXAMPLE_ID, BudgetCallback, DistillationTrainer
from slimllm.finetune.data import EVALUATION_SOURCES, FinetuneData, prepare_data
from slimllm.finetune.lora import attach_lora, merge_lora
from slimllm.finetune.run import (
    _Clock,
    _input_records,
    _training_record,
    check_paths,
    default_checkpoint_dir,
    prepare_work_dir,
    run_identity,
    write_model,
)
from slimllm.finetune.trainer import LogView, accelerator_available, build_trainer, padding_collator, train
from slimllm.io import atomic_output_dir, check_model_source, load
from slimllm.modeling import MODEL_TYPE_PREFIX
from slimllm.runtime import count_parameters, versions, write_json_atomic

DISTILL_LOG = "slimllm_distill.json"
DISTILL_PLOT = "slimllm_distill.png"
RUN_SETTINGS = "slimllm_distill_run.json"
TOPK_CACHE = "teacher-topk"
LOG_VERSION = 1
PLAN_NOTE = (
    "the weights were trained by distillation from the dense model after pruning: slimllm_plan.json records what "
    "the pruning removed, and replaying it gives the pruned weights from before this training"
)
VIEW = LogView(
    train_keys=(
        "step",
        "epoch",
        "loss",
        "kl",
        "ce",
        "top1",
        "learning_rate",
        "grad_norm",
        "num_input_tokens_seen",
        "train_tokens_per_second",
        "train_seconds",
        "peak_rss_gb",
        "cuda_peak_gb",
    ),
    shown=(
        ("kl", "kl"),
        ("train_tokens_per_second", "tok/s"),
        ("eval_kl", "held-out KL"),
        ("eval_top1", "top-1 agreement"),
        ("eval_ppl", "held-out PPL"),
    ),
)


def distill(
    student_source: str | os.PathLike,
    teacher_source: str | os.PathLike,
    data_source: str,
    output: str | os.PathLike,
    config: DistillConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_checkpoints: bool = False,
    dtype: str | None = None,
    use_cpu: bool = False,
    quiet: bool = False,
) -> dict:
    """Distil ``teacher_source`` into ``student_source`` on ``data_source``; save to ``output``.

    Under ``accelerate launch``/``torchrun`` every process calls this; only the first one writes.
    Returns the run record (what ``slimllm_distill.json`` holds).
    """
    config = config or DistillConfig()
    output = Path(output)
    work_dir = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(output)
    # What the user typed, in order, before anything slow: student, teacher, data, output.
    check_model_source(student_source)
    check_model_source(teacher_source)
    check_data_source(data_source)
    check_paths(student_source, output, work_dir, overwrite=overwrite)
    check_paths(teacher_source, output, work_dir, overwrite=overwrite)
    clock = _Clock()

    student, tokenizer = load(student_source, dtype=dtype)
    teacher_model, teacher_tokenizer = load(teacher_source, dtype=dtype)
    check_pair(student, tokenizer, teacher_model, teacher_tokenizer, config)
    plan, base_report = _input_records(student_source)
    clock.lap("load")
    data = with_example_ids(prepare_data(tokenizer, data_source, config, quiet=quiet))
    clock.lap("data")

    identity = {**run_identity(student_source, data, config), "teacher": _source_name(teacher_source)}
    resume_from = prepare_work_dir(
        work_dir,
        identity,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        settings_file=RUN_SETTINGS,
        command="distill",
    )
    teacher = LiveTeacher(teacher_model)
    if config.teacher_topk is not None:
        teacher = cached_teacher(teacher, data, work_dir / TOPK_CACHE, config, identity, use_cpu=use_cpu, quiet=quiet)
        del teacher_model
        gc.collect()
        clock.lap("teacher_cache")

    from transformers import set_seed

    set_seed(config.seed)  # LoRA's random initialisation; the Trainer reseeds the data order
    model = prepare_student(student, config)
    record = _base_record(student_source, teacher_source, student, model, plan, data, config, output, work_dir)
    budget = BudgetCallback(config.max_tokens, config.max_minutes)
    trainer = build_trainer(
        model,
        tokenizer,
        data,
        config,
        work_dir,
        log_path=work_dir / DISTILL_LOG,
        record=record,
        resuming=resume_from is not None,
        quiet=quiet,
        use_cpu=use_cpu,
        trainer_class=DistillationTrainer,
        view=VIEW,
        arguments=_training_overrides(config, data),
        collator=ExampleIdCollator(tokenizer),
        callbacks=(budget,),
        teacher=teacher,
        distill_config=config,
        budget=budget,
    )
    record["training"] = _training_record(trainer, resume_from)
    result = train(trainer, resume_from, VIEW)
    clock.lap("train")
    result["stopped_by"] = budget.reason or ("max_steps" if config.max_steps else "epochs")
    result["tokens_seen"] = trainer.state.num_input_tokens_seen
    record.update(status="done", losses=result.pop("losses"), result=result)

    if trainer.is_world_process_zero():
        trained = trainer.model
        final = merge_lora(trained) if config.lora else trained
        report = {**base_report, "distill": _report_summary(record)}
        with atomic_output_dir(output, overwrite=overwrite) as tmp:
            write_model(final, tokenizer, plan, tmp, report)
            clock.lap("save")
            record["timings_s"] = dict(clock.laps)
            write_json_atomic(tmp / DISTILL_LOG, record)
            plot_losses(record, tmp / DISTILL_PLOT)
        if not keep_checkpoints:
            shutil.rmtree(work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return record


# -- checks -------------------------------------------------------------------------------------
def check_data_source(source: str) -> None:
    """Refuse evaluation text and missing files before anything is loaded."""
    if source in EVALUATION_SOURCES:
        raise DataSourceError(
            f"{source} is an evaluation set: distilling on it would make its perplexity meaningless; use "
            "bookcorpus, lambada, a .txt/.jsonl file or hf:NAME"
        )
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".text", ".md", ".json", ".jsonl") and not path.is_file():
        raise DataSourceError(f"training data file not found: {path}")


def family(config) -> str:
    return str(config.model_type).removeprefix(MODEL_TYPE_PREFIX)


def check_pair(student, tokenizer, teacher, teacher_tokenizer, config: DistillConfig) -> None:
    """The student and teacher must share a family, a tokenizer and an output vocabulary (and, for
    hidden-state matching, a hidden size and a layer count)."""
    if family(student.config) != family(teacher.config):
        raise ConfigError(
            f"the teacher is a {family(teacher.config)} model and the student a {family(student.config)} one: "
            "distil a pruned model from the dense model it was pruned from"
        )
    if tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ConfigError("the teacher's and student's tokenizers differ: their next-token distributions don't compare")
    student_vocab = student.get_output_embeddings().out_features
    teacher_vocab = teacher.get_output_embeddings().out_features
    if student_vocab != teacher_vocab:
        raise ConfigError(f"the teacher predicts {teacher_vocab} tokens and the student {student_vocab}")
    if config.hidden_weight > 0:
        sizes = (student.config.hidden_size, teacher.config.hidden_size)
        if sizes[0] != sizes[1]:
            raise ConfigError(
                f"hidden-state matching (hidden_weight) needs equal hidden sizes; the student has {sizes[0]}, the "
                f"teacher {sizes[1]}: set hidden_weight to 0"
            )
        layers = (student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        if layers[0] != layers[1]:
            raise ConfigError(
                f"hidden-state matching (hidden_weight) pairs layer i with layer i; the student has {layers[0]} "
                f"layers, the teacher {layers[1]}: set hidden_weight to 0"
            )


# -- data, student, teacher ---------------------------------------------------------------------
def with_example_ids(data: FinetuneData) -> FinetuneData:
    """Number every example (training first, then held-out) so cached teacher targets can be found."""
    count = len(data.train)
    data.train = data.train.add_column(EXAMPLE_ID, list(range(count)))
    if data.validation is not None:
        data.validation = data.validation.add_column(EXAMPLE_ID, list(range(count, count + len(data.validation))))
    return data


class ExampleIdCollator:
    """Right-pads ``input_ids``/``attention_mask``/``labels`` as ``slimllm finetune`` does, and
    carries each example's id through as a tensor."""

    def __init__(self, tokenizer):
        self.pad = padding_collator(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad([{key: value for key, value in row.items() if key != EXAMPLE_ID} for row in features])
        batch[EXAMPLE_ID] = torch.tensor([row[EXAMPLE_ID] for row in features])
        return batch


def prepare_student(student, config: DistillConfig):
    """The model the Trainer optimises: LoRA adapters on the student, or the student itself."""
    if config.lora:
        return attach_lora(student, config)
    if config.freeze_embeddings:
        for module in (student.get_input_embeddings(), student.get_output_embeddings()):
            module.weight.requires_grad_(False)
    return student


def cached_teacher(
    teacher: LiveTeacher, data: FinetuneData, folder: Path, config: DistillConfig, identity: dict, *, use_cpu, quiet
) -> CachedTeacher:
    """Every example's top-k targets computed once (each process a share of the shards)."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu or not accelerator_available())
    teacher.to(state.device)
    examples = list(data.train["input_ids"]) + (list(data.validation["input_ids"]) if data.validation else [])
    cache_identity = {key: identity[key] for key in ("teacher", "data")} | {"cutoff": config.cutoff}
    build_topk_cache(
        teacher,
        examples,
        folder,
        k=config.teacher_topk,
        temperature=config.temperature,
        identity=cache_identity,
        batch_size=config.micro_batch_size,
        rank=state.process_index,
        world_size=state.num_processes,
        barrier=state.wait_for_everyone,
        progress=not quiet and sys.stderr.isatty(),
    )
    return CachedTeacher(folder)


def _training_overrides(config: DistillConfig, data: FinetuneData) -> dict:
    overrides = {
        "lr_scheduler_type": config.lr_schedule,
        "remove_unused_columns": False,  # the example ids reach compute_loss
        "include_num_input_tokens_seen": "non_padding",
        "prediction_loss_only": True,  # validation keeps the KL sums, not the logits
        "best_metric": BEST_METRIC,
    }
    if config.max_tokens is not None and config.max_steps is None:
        # The schedule ends where the token budget does (exactly, for text blocks of equal length).
        tokens_per_step = data.info["train_tokens"] / data.info["train"] * config.batch_size
        overrides["max_steps"] = math.ceil(config.max_tokens / tokens_per_step)
    return overrides


# -- records ------------------------------------------------------------------------------------
def _source_name(source) -> str:
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def _base_record(student_source, teacher_source, student, model, plan, data, config, output, work_dir) -> dict:
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    record = {
        "format": "slimllm-distill",
        "version": LOG_VERSION,
        "status": "running",
        "student": {
            "source": str(student_source),
            "class": type(student).__name__,
            "pruned": plan is not None,
            "parameters": count_parameters(student),
            "trainable_parameters": trainable,
            "dtype": str(student.dtype).removeprefix("torch."),
        },
        "teacher": {"source": str(teacher_source), "resident": config.teacher_topk is None},
        "data": {key: value for key, value in data.info.items()},
        "config": config.to_dict(),
        "output": {"path": str(output), "checkpoint_dir": str(work_dir)},
        "versions": versions(),
    }
    if plan is not None:
        record["note"] = PLAN_NOTE
    return record


def _report_summary(record: dict) -> dict:
    validation = record["losses"]["validation"]
    first = validation[0] if validation and validation[0]["step"] == 0 else None
    summary = {
        "method": "distillation" + (" (LoRA)" if record["config"]["lora"] else ""),
        "teacher": record["teacher"]["source"],
        "data": record["data"].get("source"),
        "steps": record["result"]["global_step"],
        "tokens": record["result"]["tokens_seen"],
        "held_out_kl_before": first["kl"] if first else None,
        "best_held_out_kl": record["result"]["best_validation_loss"],
        "best_step": record["result"]["best_step"],
        "log": DISTILL_LOG,
    }
    if "note" in record:
        summary["note"] = record["note"]
    return summary


def plot_losses(record: dict, path: Path) -> None:
    """Training and held-out KL against the tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [entry for entry in record["losses"]["train"] if "kl" in entry]
    tokens_at = {entry["step"]: entry.get("num_input_tokens_seen", 0) for entry in train}
    held_out = record["losses"]["validation"]
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    if train:
        axis.plot([tokens_at[e["step"]] for e in train], [e["kl"] for e in train], lw=0.8, alpha=0.6, label="training")
    if held_out:
        axis.plot([tokens_at.get(e["step"], 0) for e in held_out], [e["kl"] for e in held_out], "o-", label="held-out")
    axis.set_xlabel("training tokens")
    axis.set_ylabel("KL(teacher ‖ student), nats per token")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"distillation from {Path(record['teacher']['source']).name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = ["DISTILL_LOG", "DISTILL_PLOT", "check_pair", "distill"]
