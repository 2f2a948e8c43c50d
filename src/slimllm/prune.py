"""``prune(model, tokenizer, config) -> (pruned model, plan)``: the whole SlimLLM pipeline.

text → token windows → layer-0 inputs → dense layer cosines → per-layer ratios → for each layer
in order: attention statistics → kept heads → surgery + regression → FFN statistics → kept
channels → surgery + regression → the pruned layer's outputs feed the next layer.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from slimllm.allocation import Allocation, attention_units, layer_costs, removed_params
from slimllm.calibrate import (
    LayerBatch,
    StopForward,
    capture_layer_inputs,
    hooks,
    on_device,
    run_layer,
    token_cosine,
)
from slimllm.config import ConfigError, PruneConfig
from slimllm.data.sources import calibration_windows
from slimllm.importance import AttentionStats, MlpStats
from slimllm.io import resolve_dtype
from slimllm.methods import Method, build_method
from slimllm.models import adapter_for
from slimllm.models.base import ModelAdapter
from slimllm.plan import LayerPlan, PrunePlan
from slimllm.runtime import count_parameters, versions
from slimllm.stats import Moments, PairedColumnMoments
from slimllm.surgery import prune_channels, prune_heads, recover_attention, recover_mlp


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


@torch.no_grad()
def collect_attention_stats(adapter, layer, index, batches, units, device) -> AttentionStats:
    parts = adapter.attention(layer)
    moments = Moments(parts.o_proj.in_features, device, where=f"o_proj input of layer {index}")

    def grab(_module, args):
        moments.update(args[0])
        raise StopForward

    with hooks(lambda: parts.o_proj.register_forward_pre_hook(grab)):
        run_layer(layer, index, batches, keep_outputs=False)
    return AttentionStats(moments, parts, units)


@torch.no_grad()
def collect_mlp_stats(adapter, layer, index, batches, device) -> MlpStats:
    parts = adapter.mlp(layer)
    mlp_module = adapter.mlp_module(layer)
    where = f"FFN of layer {index}"
    d = parts.down_proj.out_features
    inputs = Moments(d, device, full=False, where=where)
    hidden = Moments(parts.width, device, full=False, where=where)
    output = Moments(d, device, where=where)

    def grab_input(_module, args):
        inputs.update(args[0])

    def grab_hidden(_module, args):
        hidden.update(args[0])

    def grab_output(_module, _args, out):
        output.update(out)
        raise StopForward

    with hooks(
        lambda: mlp_module.register_forward_pre_hook(grab_input),
        lambda: parts.down_proj.register_forward_pre_hook(grab_hidden),
        lambda: parts.down_proj.register_forward_hook(grab_output),
    ):
        run_layer(layer, index, batches, keep_outputs=False)
    return MlpStats(inputs, hidden, output, parts)


def paired_output_hook(down_proj: torch.nn.Linear, kept: list[int], moments: PairedColumnMoments):
    """A pre-hook for ``down_proj`` that streams dense and kept-channel outputs into ``moments``."""
    weight, bias = down_proj.weight, down_proj.bias
    index = torch.tensor(kept, dtype=torch.long, device=weight.device)
    kept_weight = weight.index_select(1, index)

    def hook(_module, args):
        hidden = args[0]
        dense = torch.nn.functional.linear(hidden, weight, bias)
        approx = torch.nn.functional.linear(hidden.index_select(-1, index), kept_weight, bias)
        moments.update(dense, approx)

    return hook


@torch.no_grad()
def collect_paired_outputs(adapter, layer, index, batches, kept, device) -> PairedColumnMoments:
    down = adapter.mlp(layer).down_proj
    moments = PairedColumnMoments(down.out_features, device, where=f"FFN output of layer {index}")
    stream = paired_output_hook(down, kept, moments)

    def grab(module, args):
        stream(module, args)
        raise StopForward

    with hooks(lambda: down.register_forward_pre_hook(grab)):
        run_layer(layer, index, batches, keep_outputs=False)
    return moments


def _resolve_device(config: PruneConfig, model: torch.nn.Module) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return next(model.parameters()).device


class _LayerPruner:
    """Prunes one layer at a time, keeping the running parameter budget on target."""

    def __init__(self, adapter, method: Method, config: PruneConfig, allocation: Allocation, costs, device):
        self.adapter, self.method, self.config = adapter, method, config
        self.allocation, self.costs, self.device = allocation, costs, device
        self.adds_bias = method.adds_bias
        self.surplus = 0.0  # parameters removed beyond the plan so far (kv heads that went with their queries)

    def __call__(self, index: int, layer, batches: list[LayerBatch], cosine: float) -> LayerPlan:
        attn, mlp = self.adapter.attention(layer), self.adapter.mlp(layer)
        record = LayerPlan(
            index=index,
            kept_heads=list(range(attn.num_heads)),
            kept_kv_heads=list(range(attn.num_kv_heads)),
            query_to_kv=list(attn.query_to_kv),
            kept_channels=list(range(mlp.width)),
            ratio=self.allocation.ratios[index],
            cosine=cosine,
        )
        planned_units = self.allocation.units_to_prune[index]
        planned_channels = self.allocation.channels_to_prune[index]
        if planned_units:
            removed = self._prune_attention(layer, index, batches, planned_units, record)
            self.surplus += removed - removed_params(self.costs[index], planned_units, 0, self.adds_bias)
        if planned_channels:
            # Spend or give back the surplus here, in whole channels, so the total stays on target.
            adjust = round(self.surplus / self.costs[index].channel_params)
            channels = min(mlp.width - 1, max(0, planned_channels - adjust))
            removed = self._prune_mlp(layer, index, batches, channels, record) if channels else 0
            self.surplus += removed - removed_params(self.costs[index], 0, planned_channels, self.adds_bias)
        return record

    def _prune_attention(self, layer, index: int, batches, num_units: int, record: LayerPlan) -> int:
        adapter, module = self.adapter, self.adapter.attention_module(layer)
        before = count_parameters(module)
        units = attention_units(adapter.attention(layer).query_to_kv, self.config.gqa)
        stats = collect_attention_stats(adapter, layer, index, batches, units, self.device)
        selection = self.method.heads.select(stats, num_units)
        kept_heads = sorted(h for u in selection.kept for h in units[u])
        recovery = self.method.recovery.attention(stats, kept_heads)  # from the dense o_proj, before surgery
        record.kept_kv_heads, record.query_to_kv = prune_heads(adapter, layer, kept_heads)
        record.kept_heads, record.head_scores = kept_heads, selection.scores
        if recovery is not None:
            recover_attention(adapter, layer, recovery)
            record.attn_recovery = recovery
        return before - count_parameters(adapter.attention_module(layer))

    def _prune_mlp(self, layer, index: int, batches, num_channels: int, record: LayerPlan) -> int:
        adapter = self.adapter
        before = count_parameters(adapter.mlp_module(layer))
        stats = collect_mlp_stats(adapter, layer, index, batches, self.device)
        kept = self.method.channels.select(stats, num_channels).kept
        paired = None
        if self.method.recovery.needs_output_pass:
            paired = collect_paired_outputs(adapter, layer, index, batches, kept, self.device)
        recovery = self.method.recovery.mlp(stats, kept, paired)
        prune_channels(adapter, layer, kept)
        record.kept_channels = kept
        if recovery is not None:
            recover_mlp(adapter, layer, recovery)
            record.mlp_recovery = recovery
        return before - count_parameters(adapter.mlp_module(layer))


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
) -> tuple[torch.nn.Module, PrunePlan]:
    """Prune ``model`` with SlimLLM (or ``config.method``); the input model is left untouched.

    ``data`` may be a (nsamples × seqlen) LongTensor of calibration token windows; otherwise
    ``config.calib`` is tokenised with ``tokenizer``. Returns the pruned model (the family's
    stock class with per-layer shapes, :mod:`slimllm.modeling`) and the :class:`PrunePlan`
    (with ``plan.report``).
    """
    config = config or PruneConfig()
    config.validate()
    timer = _Timer()
    wall_start = time.perf_counter()
    adapter = adapter_for(model.config)
    method = build_method(config)
    device = _resolve_device(config, model)

    with timer.phase("calibration_data"):
        if data is None:
            if tokenizer is None:
                raise ValueError("prune needs a tokenizer to build calibration windows (or pass data=)")
            data, calib_info = calibration_windows(tokenizer, config.calib, config.nsamples, config.seqlen, config.seed)
        else:
            calib_info = {"source": "tensor", "windows": int(data.shape[0])}
        if data.ndim != 2 or data.shape[1] < 2:
            raise ValueError(f"calibration data must be (nsamples, seqlen) token ids, got shape {tuple(data.shape)}")

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

    with timer.phase("capture_inputs"):
        layer0_inputs = capture_layer_inputs(slim, adapter, data, config.batch_size, device)

    with timer.phase("layer_cosines"):
        cosines, batches = [], layer0_inputs
        for index, layer in enumerate(tqdm(layers, desc="layer cosines (dense)", disable=not progress, leave=False)):
            with on_device(layer, device):
                outputs = run_layer(layer, index, batches)
            cosines.append(token_cosine(batches, outputs))
            batches = outputs

    if method.prepare is not None:
        with timer.phase("prepare_method"):
            method.prepare(slim, adapter, layer0_inputs, data, device)

    with timer.phase("allocation"):
        costs = layer_costs(slim, adapter, config.gqa)
        allocation = method.allocator(cosines, costs, ratio_base, config)

    prune_layer = _LayerPruner(adapter, method, config, allocation, costs, device)
    layer_plans, layer_rows = [], []
    with timer.phase("prune_layers"):
        batches = layer0_inputs
        for index, layer in enumerate(tqdm(layers, desc="pruning layers", disable=not progress)):
            start, before = time.perf_counter(), count_parameters(layer)
            with on_device(layer, device):
                record = prune_layer(index, layer, batches, cosines[index])
                batches = run_layer(layer, index, batches)
            layer_plans.append(record)
            layer_rows.append(_layer_row(record, before, count_parameters(layer), time.perf_counter() - start))
    adapter.sync_config(slim)

    plan = PrunePlan(
        model_type=model.config.model_type,
        num_layers=len(layers),
        num_heads=model.config.num_attention_heads,
        num_kv_heads=getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads,
        intermediate_size=model.config.intermediate_size,
        layers=layer_plans,
        config=config.to_dict(),
        source=getattr(model.config, "_name_or_path", None) or None,
    )
    pruned_params = count_parameters(slim)
    timer.seconds["total"] = time.perf_counter() - wall_start
    plan.report = {
        "settings": config.to_dict(),
        "calibration": calib_info,
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
        },
        "layers": layer_rows,
        "seconds": timer.seconds,
    }
    return slim, plan


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
    }
