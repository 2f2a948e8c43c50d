"""Folder to folder: load a (pruned) model, LoRA-tune it, save the merged model or the adapter.

Checkpoints go to a work folder beside the output (``OUTPUT.checkpoints`` unless named), which
survives an interrupted run so ``resume=True`` continues it, and is removed after success. The
work folder also holds ``slimllm_finetune_run.json``, what a resumed run must match (model, data,
settings), and the live ``slimllm_finetune.json`` loss log. The output folder appears only when
complete (written to a temporary sibling and renamed), with ``slimllm_finetune.json`` inside:
settings, data provenance, versions, per-step losses, timings. The input folder is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from slimllm.config import ConfigError
from slimllm.finetune.config import FinetuneConfig
from slimllm.finetune.data import FinetuneData, prepare_data
from slimllm.finetune.lora import attach_lora, merge_lora
from slimllm.finetune.trainer import build_trainer, train, world_size
from slimllm.io import REPORT_FILE, OutputExistsError, atomic_output_dir, load, save
from slimllm.modeling import is_pruned_config
from slimllm.plan import PLAN_FILE, PrunePlan
from slimllm.runtime import versions, write_json_atomic

FINETUNE_LOG = "slimllm_finetune.json"
RUN_SETTINGS = "slimllm_finetune_run.json"
LOG_VERSION = 1
PLAN_NOTE = (
    "the weights were LoRA-fine-tuned after pruning: slimllm_plan.json records what the pruning removed, "
    "and replaying it gives the pruned weights from before this fine-tune"
)


class _Clock:
    """Seconds per phase, and in total."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.pop("total", None)
        self.laps[name] = round(now - self.last, 2)
        self.laps["total"] = round(now - self.start, 2)
        self.last = now


def default_checkpoint_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".checkpoints")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def finetune(
    model_source: str | os.PathLike,
    data_source: str,
    output: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    merge: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_checkpoints: bool = False,
    dtype: str | None = None,
    use_cpu: bool = False,
    quiet: bool = False,
) -> dict:
    """LoRA-tune ``model_source`` on ``data_source``; save to ``output``; return the run record.

    ``merge`` folds the adapters into the weights and writes a model folder like ``slimllm prune``
    does (plan and report carried over); otherwise only the adapter is written. Under
    ``accelerate launch``/``torchrun`` every process calls this; only the first one writes.
    """
    config = config or FinetuneConfig()
    output = Path(output)
    work_dir = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(output)
    check_paths(model_source, output, work_dir, overwrite=overwrite)
    clock = _Clock()

    model, tokenizer = load(model_source, dtype=dtype)
    plan, base_report = _input_records(model_source)
    clock.lap("load")
    data = prepare_data(tokenizer, data_source, config, quiet=quiet)
    if data.info.get("warning") and not quiet:
        print(f"slimllm finetune: warning: {data.info['warning']}", file=sys.stderr)
    clock.lap("data")

    resume_from = prepare_work_dir(
        work_dir, run_identity(model_source, data, config), resume=resume, overwrite=overwrite, quiet=quiet
    )
    from transformers import set_seed

    set_seed(config.seed)  # the adapters' random initialisation
    peft_model = attach_lora(model, config)
    record = _base_record(model_source, model, peft_model, plan, data, config, output, work_dir, merge)
    trainer = build_trainer(
        peft_model,
        tokenizer,
        data,
        config,
        work_dir,
        log_path=work_dir / FINETUNE_LOG,
        record=record,
        resuming=resume_from is not None,
        quiet=quiet,
        use_cpu=use_cpu,
    )
    record["training"] = _training_record(trainer, resume_from)
    result = train(trainer, resume_from)
    clock.lap("train")
    record.update(status="done", losses=result.pop("losses"), result=result)

    if trainer.is_world_process_zero():
        report = {**base_report, "finetune": _report_summary(record)}
        save_output(peft_model, tokenizer, plan, output, record, report, merge=merge, overwrite=overwrite, clock=clock)
        if not keep_checkpoints:
            shutil.rmtree(work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return record


# -- paths and the work folder ------------------------------------------------------------------
def check_paths(model_source, output: Path, work_dir: Path, *, overwrite: bool) -> None:
    """Refuse an existing output (without ``overwrite``) and any output inside the input folder."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output folder {output} already exists (pass --overwrite to replace it)")
    source = Path(model_source).expanduser()
    if source.is_dir():
        source = source.resolve()
        for path, what in ((output, "output"), (work_dir, "checkpoint")):
            resolved = path.expanduser().resolve()
            if resolved == source or source in resolved.parents or resolved in source.parents:
                raise ConfigError(f"the {what} folder {path} overlaps the input model folder {model_source}")


def run_identity(model_source, data: FinetuneData, config: FinetuneConfig) -> dict:
    """What a resumed run must share with the interrupted one, as plain JSON values."""
    source = Path(model_source).expanduser()
    identity = {
        "model": str(source.resolve()) if source.exists() else str(model_source),
        "data": {key: data.info.get(key) for key in ("source", "sha256", "format", "total")},
        "config": config.to_dict(),
        "world_size": world_size(),
    }
    return json.loads(json.dumps(identity))


def prepare_work_dir(
    work_dir: Path,
    identity: dict,
    *,
    resume: bool,
    overwrite: bool,
    quiet: bool = False,
    settings_file: str = RUN_SETTINGS,
    command: str = "finetune",
):
    """The checkpoint to resume from (or None), after checking it belongs to this run."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
    settings = work_dir / settings_file
    if resume and last is not None:
        saved = json.loads(settings.read_text()) if settings.is_file() else None
        if saved != identity:
            raise ConfigError(f"cannot resume from {last}: {_identity_difference(saved, identity, settings_file)}")
    elif resume and not quiet:
        print(f"slimllm {command}: no checkpoint in {work_dir}; starting from the beginning", file=sys.stderr)
    elif last is not None:
        if not overwrite:
            raise OutputExistsError(
                f"{work_dir} holds checkpoints of an interrupted run: pass --resume to continue it, "
                "or --overwrite to start over"
            )
        if _is_main_process():
            shutil.rmtree(work_dir)
    if _is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(settings, identity)
    return last if resume else None


def _identity_difference(saved: dict | None, current: dict, settings_file: str = RUN_SETTINGS) -> str:
    if saved is None:
        return f"its folder has no {settings_file}"
    parts = [name for name in current if name != "config" and saved.get(name) != current[name]]
    old, new = saved.get("config", {}), current["config"]
    parts += [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
    return "the interrupted run differs in " + "; ".join(parts)


# -- records ------------------------------------------------------------------------------------
def _input_records(model_source) -> tuple[PrunePlan | None, dict]:
    """The input folder's pruning plan and report, carried into the merged output."""
    folder = Path(model_source).expanduser()
    plan = PrunePlan.load(folder) if (folder / PLAN_FILE).is_file() else None
    report_path = folder / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return plan, report


def _base_record(model_source, model, peft_model, plan, data, config, output, work_dir, merge) -> dict:
    trainable, total = peft_model.get_nb_trainable_parameters()
    record = {
        "format": "slimllm-finetune",
        "version": LOG_VERSION,
        "status": "running",
        "model": {
            "source": str(model_source),
            "class": type(model).__name__,
            "pruned": plan is not None,
            "parameters": total - trainable,
            "dtype": str(model.dtype).removeprefix("torch."),
        },
        "data": data.info,
        "config": config.to_dict(),
        "lora": {
            "modules": len(peft_model.peft_config["default"].target_modules),
            "trainable_parameters": trainable,
        },
        "output": {"path": str(output), "merged": merge, "checkpoint_dir": str(work_dir)},
        "versions": versions(),
    }
    if plan is not None:
        record["note"] = PLAN_NOTE
    return record


def _training_record(trainer, resume_from: str | None) -> dict:
    args = trainer.args
    return {
        "device": str(args.device),
        "world_size": args.world_size,
        "cpu_threads": torch.get_num_threads(),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "micro_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_steps": args.max_steps,
        "resumed_from": resume_from,
    }


def _report_summary(record: dict) -> dict:
    validation = record["losses"]["validation"]
    summary = {
        "method": "LoRA",
        "data": record["data"].get("source"),
        "steps": record["result"]["global_step"],
        "validation_loss_before": validation[0]["loss"] if validation and validation[0]["step"] == 0 else None,
        "best_validation_loss": record["result"]["best_validation_loss"],
        "log": FINETUNE_LOG,
    }
    if "note" in record:
        summary["note"] = record["note"]
    return summary


# -- output -------------------------------------------------------------------------------------
def write_model(model, tokenizer, plan, folder: Path, report: dict) -> None:
    """A pruned model as ``slimllm prune`` writes it (plan and report kept); a dense one as a plain
    Hugging Face folder with the report beside it."""
    if is_pruned_config(model.config):
        save(model, tokenizer, plan, folder, report=report, overwrite=True)
    else:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json_atomic(folder / REPORT_FILE, report)


def save_output(
    peft_model, tokenizer, plan, output: Path, record: dict, report: dict, *, merge: bool, overwrite: bool, clock
) -> None:
    """Write the merged model (or the adapter alone) and the run record, all or nothing."""
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        if merge:
            write_model(merge_lora(peft_model), tokenizer, plan, tmp, report)
        else:
            source = Path(record["model"]["source"]).expanduser()
            if source.exists():  # so PeftModel.from_pretrained finds the base from anywhere
                peft_model.peft_config["default"].base_model_name_or_path = str(source.resolve())
            peft_model.save_pretrained(tmp)
        clock.lap("save")
        record["timings_s"] = dict(clock.laps)
        write_json_atomic(tmp / FINETUNE_LOG, record)
