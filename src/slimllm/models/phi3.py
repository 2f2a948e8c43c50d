"""Phi-3: q/k/v fused in ``qkv_proj`` and gate/up in ``gate_up_proj``.

The algorithm sees separate q/k/v and gate/up projections: views of the fused weights (no copy).
Installing new ones fuses them again, so the pruned model keeps Phi-3's own layout.
"""

from __future__ import annotations

import torch
from torch import nn

from slimllm.modeling import layer_query_to_kv, layer_shape_record
from slimllm.models.base import AttentionParts, MlpParts, ModelAdapter, configure_layer


def _row_view(linear: nn.Linear, start: int, stop: int) -> nn.Linear:
    """A Linear whose weight is rows ``start:stop`` of ``linear``'s (a view sharing its storage)."""
    view = nn.Linear(linear.in_features, stop - start, bias=False, device="meta")
    view.weight = nn.Parameter(linear.weight.detach()[start:stop], requires_grad=False)
    return view


def _fused(*parts: nn.Linear) -> nn.Linear:
    weight = torch.cat([part.weight.detach() for part in parts])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class Phi3Adapter(ModelAdapter):
    model_type = "phi3"
    export_refusal = "its fused qkv_proj and gate_up_proj are not split for export yet"

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn, query_to_kv = layer.self_attn, layer_query_to_kv(layer)
        q_rows, kv_rows = len(query_to_kv) * attn.head_dim, (max(query_to_kv) + 1) * attn.head_dim
        qkv = attn.qkv_proj
        return AttentionParts(
            _row_view(qkv, 0, q_rows),
            _row_view(qkv, q_rows, q_rows + kv_rows),
            _row_view(qkv, q_rows + kv_rows, q_rows + 2 * kv_rows),
            attn.o_proj,
            attn.head_dim,
            query_to_kv,
        )

    def mlp(self, layer: nn.Module) -> MlpParts:
        fused = layer.mlp.gate_up_proj
        width = fused.out_features // 2
        return MlpParts(_row_view(fused, 0, width), _row_view(fused, width, 2 * width), layer.mlp.down_proj)

    def set_attention(self, layer: nn.Module, *, query_to_kv: list[int] | None = None, **projections) -> None:
        unknown = set(projections) - {"q_proj", "k_proj", "v_proj", "o_proj"}
        if unknown:
            raise KeyError(sorted(unknown))
        shape = layer_shape_record(layer)
        if {"q_proj", "k_proj", "v_proj"} & set(projections):
            current = self.attention(layer)
            q, k, v = (projections.get(name, getattr(current, name)) for name in ("q_proj", "k_proj", "v_proj"))
            layer.self_attn.qkv_proj = _fused(q, k, v)
        if "o_proj" in projections:
            layer.self_attn.o_proj = projections["o_proj"]
        if query_to_kv is not None:
            shape["query_to_kv"] = list(query_to_kv)
        shape["o_proj_bias"] = layer.self_attn.o_proj.bias is not None
        configure_layer(layer, shape)

    def set_mlp(self, layer: nn.Module, **projections) -> None:
        unknown = set(projections) - {"gate_proj", "up_proj", "down_proj"}
        if unknown:
            raise KeyError(sorted(unknown))
        shape = layer_shape_record(layer)
        if {"gate_proj", "up_proj"} & set(projections):
            current = self.mlp(layer)
            gate, up = projections.get("gate_proj", current.gate_proj), projections.get("up_proj", current.up_proj)
            layer.mlp.gate_up_proj = _fused(gate, up)
        if "down_proj" in projections:
            layer.mlp.down_proj = projections["down_proj"]
        shape["intermediate_size"] = layer.mlp.down_proj.in_features
        shape["down_proj_bias"] = layer.mlp.down_proj.bias is not None
        configure_layer(layer, shape)
