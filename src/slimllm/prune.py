"""``prune(model, tokenizer, config) -> (pruned model, plan)``: the whole SlimLLM pipeline.

text → token windows → layer-0 inputs → dense layer cosines → per-layer ratios → for each layer
in order: attention statistics → kept heads → surgery + regression → FFN statistics → kept
channels → surgery + regression → the pruned layer's outputs feed the next layer.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from slimllm import offload, parallel
from slimllm.allocation import Allocation, layer_costs
from slimllm.checkpoint import PruneCheckpoint, windows_digest
from slimllm.config import ConfigError, PruneConfig
from slimllm.data.sources import calibration_windows
from slimllm.io import resolve_dtype
from slimllm.layer_pruner import LayerPruner
from slimllm.layer_walk import LayerBatch, capture_layer_inputs, on_device, run_layer, token_cosine
from slimllm.methods import build_method
from slimllm.models import adapter_for
from slimllm.models.base import ModelAdapter
from slimllm.plan import LayerPlan, PrunePlan
from slimllm.progress import progress_bar
from slimllm.runtime import CoreShare, count_parameters, versions
from slimllm.surgery import apply_layer_plan


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _resolve_device(config: PruneConfig, model: torch.nn.Module) -> torch.device:
    if config.device:
        return torch.device(config.device)
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device  # weights on disk are read onto the CPU


def _check_gqa_mode(config: PruneConfig, adapter: ModelAdapter, layers) -> None:
    if config.gqa == "group" and any(adapter.attention(layer).num_kv_heads == 1 for layer in layers):
        raise ConfigError(
            "--gqa group prunes whole key/value groups, but this model has a single key/value head per layer "
            "(one group, which must stay): use --gqa query"
        )


def prune(
    model: torch.nn.Module,
    tokenizer=None,
    config: PruneConfig | None = None,
    data: torch.Tensor | None = None,
    *,
    progress: bool = True,
    work_dir: str | Path | None = None,
    resume: bool = False,
) -> tuple[torch.nn.Module, PrunePlan]:
    """Prune ``model`` with SlimLLM (or ``config.method``); the input model is left untouched.

    ``data`` may be a (nsamples × seqlen) LongTensor of calibration token windows; otherwise
    ``config.calib`` is tokenised with ``tokenizer``. Returns the pruned model (the family's
    stock class with per-layer shapes, :mod:`slimllm.modeling`) and the :class:`PrunePlan`
    (with ``plan.report``).

    A model loaded with ``slimllm.load(..., on_disk=True)`` is pruned out of core: each layer is
    read in when the walk reaches it, and once pruned written to a file in ``work_dir`` (a new
    temporary folder if not given, removed with the returned model) and dropped from memory;
    :func:`slimllm.save` then streams the layers into the output's shards. With a ``work_dir``,
    the run is recorded there as it goes (:mod:`slimllm.checkpoint`) and ``resume`` continues an
    interrupted run from its last finished layer, to the same result.
    """
    config = config or PruneConfig()
    config.validate()
    timer = _Timer()
    wall_start = time.perf_counter()
    adapter = adapter_for(model.config)
    method = build_method(config)
    settings = recorded_settings(config, method)
    out_of_core = offload.has_disk_modules(model)
    if out_of_core and method.whole_model:
        raise ConfigError(
            f"--method {config.method} needs the whole model in memory at once, and this model's weights are "
            "read from disk a layer at a time: load it in memory (slimllm prune --in-memory)"
        )
    if resume and not (out_of_core and work_dir is not None):
        raise ConfigError("resuming needs an out-of-core prune (a model loaded on disk) and its work folder")
    processes = parallel.world_size()
    if processes > 1 and (resume or method.refine is not None):
        raise ConfigError(f"{'resuming' if resume else '@' + method.allocation} runs in one process; drop torchrun")
    progress = progress and parallel.is_main_process()
    device = _resolve_device(config, model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with timer.phase("calibration_data"):
        if data is None:
            if tokenizer is None:
                raise ValueError("prune needs a tokenizer to build calibration windows (or pass data=)")
            data, calib_info = calibration_windows(tokenizer, config.calib, config.nsamples, config.seqlen, config.seed)
        else:
            calib_info = {"source": "tensor", "windows": int(data.shape[0])}
        if data.ndim != 2 or data.shape[1] < 2:
            raise ValueError(f"calibration data must be (nsamples, seqlen) token ids, got shape {tuple(data.shape)}")
        run_record = _run_record(model, settings, data) if out_of_core and work_dir is not None else None
        data = parallel.share_windows(data, config.batch_size)  # this process's batches (all, when alone)

    with timer.phase("convert"):
        slim = adapter.to_slim(model)
        dtype = resolve_dtype(config.dtype)
        if dtype is not None and dtype != next(slim.parameters()).dtype:
            slim = slim.to(dtype)
    dense_params = count_parameters(slim)
    layers = adapter.layers(slim)
    _check_gqa_mode(config, adapter, layers)
    # What the ratio counts: every parameter (the paper), or the decoder layers' only.
    ratio_base = dense_params if config.ratio_of == "all" else count_parameters(layers)

    checkpoint = None
    if run_record is not None and processes == 1:
        checkpoint = PruneCheckpoint(work_dir, run_record, resume=resume)

    with timer.phase("capture_inputs"):
        layer0_inputs = capture_layer_inputs(slim, adapter, data, config.batch_size, device)

    with timer.phase("layer_cosines"), CoreShare(config.threads) as cores:
        cosines = checkpoint.cosines() if checkpoint is not None else None  # recorded by an interrupted run
        cosines_restored = cosines is not None
        if cosines is None:
            cosines, batches = [], layer0_inputs
            for index, layer in enumerate(
                progress_bar(layers, desc="layer cosines (dense)", disable=not progress, leave=False)
            ):
                cores.adjust()
                with on_device(layer, device):
                    outputs = run_layer(layer, index, batches)
                cosines.append(token_cosine(batches, outputs))
                batches = outputs
            if checkpoint is not None:
                checkpoint.save_cosines(cosines)

    if method.prepare is not None:
        with timer.phase("prepare_method"):
            method.prepare(slim, adapter, layer0_inputs, data, device)

    with timer.phase("allocation"):
        costs = layer_costs(slim, adapter, config.gqa)
        allocation = method.allocator(cosines, costs, ratio_base, config)
    if method.refine is not None:
        with timer.phase(f"allocation_{method.allocation}"), CoreShare(config.threads) as refine_cores:
            allocation = method.refine(
                slim, adapter, method, config, allocation, costs, layer0_inputs, device,
                cosines=cosines, ratio_base=ratio_base, progress=progress, cores=refine_cores,
            )  # fmt: skip

    prune_layer = LayerPruner(adapter, method, config, allocation, costs, device)
    spill = _LayerSpill(slim, work_dir) if out_of_core else None
    layer_plans, layer_rows, batches = [], [], layer0_inputs
    finished = checkpoint.finished_layers(len(layers)) if checkpoint is not None else 0
    if finished:
        batches = _restore_finished(
            checkpoint, finished, slim, adapter, prune_layer, layer0_inputs, device, layer_plans, layer_rows
        )
    with timer.phase("prune_layers"), CoreShare(config.threads) as pruning_cores:
        for index, layer in enumerate(
            progress_bar(layers, desc="pruning layers", disable=not progress, initial=finished)
        ):
            if index < finished:
                continue
            pruning_cores.adjust()
            start, before = time.perf_counter(), count_parameters(layer)
            with on_device(layer, device):
                record, batches = prune_layer(index, layer, batches, cosines[index])
            if spill is not None and not offload.on_disk(layer):  # pruned: its new weights go to disk
                spill(index, layer)  # (by the first process; the others hold the same weights and drop them)
            layer_plans.append(record)
            layer_rows.append(_layer_row(record, before, count_parameters(layer), time.perf_counter() - start))
            if checkpoint is not None:
                checkpoint.finish_layer(record, layer_rows[-1], prune_layer.surplus, batches, prune_layer.dense_inputs)
            _point_refits_at_model(slim, adapter, layer, record, drop=spill is not None)
    for record in layer_plans[:finished]:  # restored from an interrupted run's records
        _point_refits_at_model(slim, adapter, layers[record.index], record, drop=spill is not None)
    adapter.sync_config(slim)

    plan = PrunePlan(
        model_type=model.config.model_type,
        num_layers=len(layers),
        num_heads=model.config.num_attention_heads,
        num_kv_heads=getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads,
        intermediate_size=model.config.intermediate_size,
        layers=layer_plans,
        config=settings,
        source=getattr(model.config, "_name_or_path", None) or None,
    )
    timer.seconds["total"] = time.perf_counter() - wall_start
    plan.report = _report(
        config, calib_info, dense_params, count_parameters(slim), ratio_base, allocation, layer_rows,
        prune_layer, (cores, pruning_cores), timer.seconds, device,
        {"layers_from_work_folder": finished, "cosines_from_work_folder": cosines_restored},
    )  # fmt: skip
    return slim, plan


def recorded_settings(config: PruneConfig, method) -> dict:
    """``config`` as the plan and report record it: every plug-in option of the run, given or
    defaulted, in ``options`` (so a record says what ran, whatever the defaults become)."""
    return {**config.to_dict(), "options": method.options_dict()}


def _run_record(model, settings: dict, windows: torch.Tensor) -> dict:
    """What identifies a prune, for resuming it: the settings, the calibration windows, the
    model's config and the files its weights are read from (names and sizes)."""
    units = offload.units_of(model)
    files = sorted({str(path) for _, unit in units for path in offload.disk_weights(unit).files.paths})
    return {
        "settings": settings,
        "calibration_windows": windows_digest(windows),
        "model_config": {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"},
        "weight_files": {path: Path(path).stat().st_size for path in files},
    }


def _point_refits_at_model(slim, adapter, layer, record: LayerPlan, drop: bool) -> None:
    """Name the pruned model's tensor that holds each refitted projection of ``record`` (saving the
    plan then names it instead of copying it); with ``drop`` (out of core, the layer is on disk)
    let go of the weight itself, so nothing of a finished layer stays resident."""
    projections = {"attn": adapter.attention(layer).o_proj, "mlp": adapter.mlp(layer).down_proj}
    names = None
    for part, recovery in record.recoveries():
        if recovery is None or recovery.weight is None:
            continue
        if names is None:
            names = {id(module): name for name, module in slim.named_modules()}
        recovery.weight_in_model = names[id(projections[part])] + ".weight"
        if drop:
            recovery.weight = None


def _restore_finished(
    checkpoint, finished, slim, adapter, pruner, layer0_inputs, device, layer_plans: list, layer_rows: list
) -> list[LayerBatch]:
    """Give the first ``finished`` layers their recorded pruned shapes and weight files (their plan
    entries and report rows appended to ``layer_plans`` / ``layer_rows``), the pruner its running
    surplus; return the hidden states the last of them passed on."""
    layers, names = adapter.layers(slim), {id(m): n for n, m in slim.named_modules()}
    for index in range(finished):
        record, row, surplus, outputs, dense = checkpoint.load_layer(index)
        layer_plans.append(record)
        layer_rows.append(row)
        layer, path = layers[index], checkpoint.layer_file(index)
        if path.is_file():  # pruned: its shapes follow the plan, its weights are in the file
            apply_layer_plan(adapter, layer, record)
            offload.attach(layer, offload.TensorFiles.of_files([path]), names[id(layer)] + ".")
    kwargs = [batch.layer_kwargs for batch in layer0_inputs]
    if len(outputs) != len(kwargs):
        raise ConfigError(
            f"--resume: {checkpoint.folder} lacks the hidden states of layer {finished - 1}; run without --resume"
        )
    pruner.surplus = surplus
    if dense:
        pruner.dense_inputs = [LayerBatch(h.to(device), k) for h, k in zip(dense, kwargs, strict=True)]
    return [LayerBatch(h.to(device), k) for h, k in zip(outputs, kwargs, strict=True)]


class _LayerSpill:
    """Writes each pruned layer to ``work_dir/layer-NNNNN.safetensors`` and drops it from memory
    (out-of-core pruning); a temporary ``work_dir`` is removed when the pruned model is."""

    def __init__(self, slim: torch.nn.Module, work_dir: str | Path | None):
        if work_dir is None:
            work_dir = tempfile.mkdtemp(prefix="slimllm-prune-")
            weakref.finalize(slim, shutil.rmtree, work_dir, ignore_errors=True)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.names = {id(module): name for name, module in slim.named_modules()}

    def __call__(self, index: int, layer: torch.nn.Module) -> None:
        if not parallel.is_main_process():
            offload.discard(layer)
            return
        offload.spill(layer, self.work_dir / f"layer-{index:05d}.safetensors", self.names[id(layer)] + ".")


def _report(
    config: PruneConfig,
    calibration: dict,
    dense_params: int,
    pruned_params: int,
    ratio_base: int,
    allocation: Allocation,
    layer_rows: list[dict],
    pruner: LayerPruner,
    cores: tuple[CoreShare, CoreShare],
    seconds: dict,
    device: torch.device,
    restored: dict,
) -> dict:
    """What ``slimllm_report.json`` holds: settings, calibration, versions, realised parameter
    counts, the allocation, per-layer rows, kept activations, threads, timings (and GPU memory).
    ``restored``: what a resumed run took from its work folder (finished layers, the dense cosines)."""
    cosine_cores, pruning_cores = cores
    recovery = pruner.method.recovery
    layer_targets = recovery.dense_targets and not recovery.dense_inputs  # ridge-layer
    report = {
        "settings": recorded_settings(config, pruner.method),
        "calibration": calibration,
        "versions": versions(),
        "params": {
            "dense": dense_params,
            "pruned": pruned_params,
            "ratio_of": config.ratio_of,
            "ratio_base": ratio_base,
            "target_ratio": config.ratio,
            "realised_ratio": (dense_params - pruned_params) / ratio_base,
            "target_removed": allocation.target_removed,
            "removed": dense_params - pruned_params,
        },
        "allocation": {
            "r0": allocation.r0,
            "pruned_layers": allocation.pruned_layers,
            "alpha": allocation.alpha,
            "selected": allocation.selected,
            "planned_removed": allocation.planned_removed,
            **({"search": allocation.search} if allocation.search is not None else {}),
        },
        "recovery": {
            "kind": recovery.name,
            # dense targets (the dense model's states, or with the dense layers on the pruned inputs the
            # dense layer's output) are used only where the projections feed the residual as they are
            "aims_at_dense_model": pruner.dense_alongside and recovery.dense_inputs,
            **({"aims_at_dense_layer": pruner.dense_alongside} if layer_targets else {}),
        },
        "layers": layer_rows,
        "activation_cache": {
            "cap_gib": config.cache_gb,
            "peak_bytes": pruner.cache_peak_bytes,
            "recomputed_layers": pruner.recomputed_layers,
        },
        "threads": {
            "fixed": config.threads,
            "cores": cosine_cores.cores,
            "per_layer": {"layer_cosines": cosine_cores.used, "prune_layers": pruning_cores.used},
        },
        "seconds": seconds,
    }
    if any(restored.values()):
        # A resumed run's phase seconds are this process's only; each layer's row keeps the seconds
        # of the run that pruned it, so the rows add up to the whole walk.
        report["resumed"] = restored
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        report["device_memory"] = {"device": str(device), "peak_allocated_bytes": peak}
    return report


def _layer_row(record: LayerPlan, params_before: int, params_after: int, seconds: float) -> dict:
    return {
        "layer": record.index,
        "cosine": record.cosine,
        "ratio": record.ratio,
        "heads": len(record.kept_heads),
        "kv_heads": len(record.kept_kv_heads),
        "channels": len(record.kept_channels),
        "params_before": params_before,
        "params_after": params_after,
        "realised_ratio": 1 - params_after / params_before,
        "seconds": seconds,
        **{
            f"{part}_fit": recovery.fit
            for part, recovery in (("attn", record.attn_recovery), ("mlp", record.mlp_recovery))
            if recovery is not None and recovery.fit is not None
        },
    }
