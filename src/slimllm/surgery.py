"""Physically remove heads and channels: smaller Linear layers, no masks.

Every function builds new tensors and modules; nothing is changed in place, so weights shared
with the caller's dense model are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from slimllm.models import adapter_for
from slimllm.models.base import ModelAdapter
from slimllm.plan import LayerPlan, PrunePlan, Recovery


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A frozen Linear holding ``weight`` (out x in) and ``bias`` as they are (no copy, nothing
    allocated first)."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=False)
    return new


def slice_linear(linear: nn.Linear, *, rows: list[int] | None = None, cols: list[int] | None = None) -> nn.Linear:
    """A new Linear keeping output ``rows`` and input ``cols`` (all when None)."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        index = torch.tensor(rows, dtype=torch.long, device=weight.device)
        weight = weight.index_select(0, index)
        bias = bias.index_select(0, index) if bias is not None else None
    if cols is not None:
        weight = weight.index_select(1, torch.tensor(cols, dtype=torch.long, device=weight.device))
    return linear_from(weight.clone(), bias.clone() if bias is not None else None)


def fold_into_linear(linear: torch.nn.Linear, recovery: Recovery) -> torch.nn.Linear:
    """A new Linear computing ``scale ⊙ linear(x) + bias`` (scale and bias per output)."""
    dtype, device = linear.weight.dtype, linear.weight.device
    if recovery.weight is None and recovery.weight_in_model is not None:
        raise ValueError(
            f"this plan's refitted weight lives in its pruned model ({recovery.weight_in_model}): "
            "apply the plan as PrunePlan.load(folder) gives it, after the pruned model is saved there"
        )
    if recovery.weight is not None:  # a refitted projection replaces the pruned one
        if tuple(recovery.weight.shape) != tuple(linear.weight.shape):
            shapes = f"{tuple(recovery.weight.shape)} vs {tuple(linear.weight.shape)}"
            raise ValueError(f"the refitted weight does not fit the pruned projection: {shapes}")
        return linear_from(recovery.weight.to(device=device, dtype=dtype), recovery.bias.to(device=device, dtype=dtype))
    scale = recovery.scale.to(device=device, dtype=torch.float64)
    weight = (linear.weight.detach().to(torch.float64) * scale[:, None]).to(dtype)
    bias = recovery.bias.to(device=device, dtype=torch.float64)
    if linear.bias is not None:
        bias = bias + scale * linear.bias.detach().to(torch.float64)
    return linear_from(weight, bias.to(dtype))


def head_rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def prune_heads(adapter: ModelAdapter, layer: nn.Module, kept_heads: list[int]) -> tuple[list[int], list[int]]:
    """Keep the query heads ``kept_heads`` (indices into the layer's current heads).

    A key/value head survives while any of its query heads does. Returns (kept kv heads,
    new query→kv map in the layer's new local indices)."""
    parts = adapter.attention(layer)
    kept_heads = sorted(kept_heads)
    kept_kv = sorted({parts.query_to_kv[h] for h in kept_heads})
    local_kv = {kv: i for i, kv in enumerate(kept_kv)}
    query_to_kv = [local_kv[parts.query_to_kv[h]] for h in kept_heads]
    q_rows, kv_rows = head_rows(kept_heads, parts.head_dim), head_rows(kept_kv, parts.head_dim)
    adapter.slice_head_parameters(layer, q_rows, kv_rows)
    adapter.set_attention(
        layer,
        q_proj=slice_linear(parts.q_proj, rows=q_rows),
        k_proj=slice_linear(parts.k_proj, rows=kv_rows),
        v_proj=slice_linear(parts.v_proj, rows=kv_rows),
        o_proj=slice_linear(parts.o_proj, cols=q_rows),
        query_to_kv=query_to_kv,
    )
    return kept_kv, query_to_kv


def prune_channels(adapter: ModelAdapter, layer: nn.Module, kept_channels: list[int]) -> None:
    parts = adapter.mlp(layer)
    adapter.set_mlp(
        layer,
        gate_proj=slice_linear(parts.gate_proj, rows=kept_channels),
        up_proj=slice_linear(parts.up_proj, rows=kept_channels),
        down_proj=slice_linear(parts.down_proj, cols=kept_channels),
    )


def recover_attention(adapter: ModelAdapter, layer: nn.Module, recovery: Recovery) -> None:
    parts = adapter.attention(layer)
    adapter.set_attention(layer, o_proj=fold_into_linear(parts.o_proj, recovery))


def recover_mlp(adapter: ModelAdapter, layer: nn.Module, recovery: Recovery) -> None:
    parts = adapter.mlp(layer)
    adapter.set_mlp(layer, down_proj=fold_into_linear(parts.down_proj, recovery))


def apply_plan(model: nn.Module, plan: PrunePlan):
    """Rebuild the pruned model from the model it was pruned from plus its plan (no data)."""
    adapter = adapter_for(model.config)
    slim = adapter.to_slim(model)
    layers = adapter.layers(slim)
    if len(layers) != plan.num_layers:
        raise ValueError(f"the plan is for {plan.num_layers} layers, the model has {len(layers)}")
    for record in plan.layers:
        apply_layer_plan(adapter, layers[record.index], record)
    adapter.sync_config(slim)
    return slim


def apply_layer_plan(adapter: ModelAdapter, layer: nn.Module, record: LayerPlan) -> None:
    """Cut and refit one dense layer as ``record`` says (on ``meta`` placeholders too: the shapes follow)."""
    if len(record.kept_heads) < adapter.attention(layer).num_heads:
        prune_heads(adapter, layer, record.kept_heads)
    if record.attn_recovery is not None:
        recover_attention(adapter, layer, record.attn_recovery)
    if len(record.kept_channels) < adapter.mlp(layer).width:
        prune_channels(adapter, layer, record.kept_channels)
    if record.mlp_recovery is not None:
        recover_mlp(adapter, layer, record.mlp_recovery)
