"""vLLM-ready pruned folders: every layer's key/value heads serve equal runs of query heads.

vLLM's attention (like llama.cpp's) runs grouped-query attention only with equal, consecutive
groups: query head ``i`` reads key/value head ``i // group``. A prune with ``--gqa query`` leaves
maps like ``[0, 0, 1, 2, 2]``. This export rewrites each such layer exactly, as the GGUF export
does: a key/value head serving ``s`` query heads is copied ``ceil(s / g)`` times, each copy gets
``g`` query slots, and an unfilled slot is a zero query head whose ``o_proj`` columns are zero (it
contributes nothing). ``g`` is chosen per layer for the fewest added parameters and, among those,
the fewest key/value heads, since the KV cache is what limits a server's concurrency
(:func:`slimllm.export.source.best_regroup`); layers that are already regular are copied as they
are. The result is a slimllm folder like the input (reloads with ``from_pretrained``, same
logits), which vLLM serves through slimllm's plug-in (:mod:`slimllm.serve.vllm_plugin`).

Families whose heads are not independent (OLMo 2: q/k norms over the whole projection width) are
refused when a layer needs rewriting: a zero slot or a copied head changes those norms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from slimllm.export.source import ExportError, best_regroup, gather_heads
from slimllm.modeling import layer_query_to_kv, regular_group_size
from slimllm.surgery import linear_from


@dataclass
class VllmReport:
    output: str
    layers_rewritten: list[int]
    heads: list[int]
    kv_heads: list[int]
    ffn_widths: list[int]
    added_query_heads: int
    added_kv_heads: int
    source_params: int
    written_params: int
    tensor_parallel_sizes: list[int]  # --tensor-parallel-size values that split every layer (up to 8)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _heads(linear: nn.Linear, sources: list[int | None], head_dim: int) -> nn.Linear:
    """``linear``'s output heads in the order ``sources`` (None: a zero head)."""
    bias = None if linear.bias is None else gather_heads(linear.bias.detach(), sources, head_dim)
    return linear_from(gather_heads(linear.weight.detach(), sources, head_dim), bias)


def regularise_layer(adapter, layer: nn.Module) -> tuple[int, int] | None:
    """Rewrite ``layer``'s attention with equal consecutive groups; ``None`` if it already has them,
    else ``(query heads added, key/value heads added)``."""
    parts = adapter.attention(layer)
    plan = best_regroup(parts.query_to_kv, fewest_kv=True)
    if plan.query_src == list(range(parts.num_heads)) and plan.kv_src == list(range(parts.num_kv_heads)):
        return None
    hd = parts.head_dim
    o_weight = gather_heads(parts.o_proj.weight.detach(), plan.query_src, hd, dim=1)
    o_bias = None if parts.o_proj.bias is None else parts.o_proj.bias.detach()
    adapter.set_attention(
        layer,
        q_proj=_heads(parts.q_proj, plan.query_src, hd),
        k_proj=_heads(parts.k_proj, plan.kv_src, hd),
        v_proj=_heads(parts.v_proj, plan.kv_src, hd),
        o_proj=linear_from(o_weight, o_bias),
        query_to_kv=[slot // plan.group for slot in range(len(plan.query_src))],
    )
    return len(plan.query_src) - parts.num_heads, len(plan.kv_src) - parts.num_kv_heads


def tensor_parallel_sizes(heads: list[int], kv_heads: list[int], widths: list[int], largest: int = 8) -> list[int]:
    """The tensor-parallel sizes vLLM can split every layer over: query heads and FFN width
    divisible by the size, key/value heads divisible by it or dividing it (vLLM replicates them)."""
    return [
        size
        for size in range(1, largest + 1)
        if all(h % size == 0 and (kv % size == 0 or size % kv == 0) for h, kv in zip(heads, kv_heads, strict=True))
        and all(width % size == 0 for width in widths)
    ]


def export_vllm(folder: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False) -> VllmReport:
    """Write a copy of the pruned ``folder`` that vLLM serves (see the module docstring)."""
    from slimllm.io import load, save
    from slimllm.modeling import MODEL_TYPE_PREFIX
    from slimllm.models import adapter_for

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} has no config.json: give a folder written by `slimllm prune`")
    values = json.loads((folder / "config.json").read_text())
    if not str(values.get("model_type", "")).startswith(MODEL_TYPE_PREFIX):
        raise ExportError(
            f"{folder} is not a pruned slimllm folder; a dense model serves in vLLM as it is (`vllm serve {folder}`)"
        )
    dtype = values.get("dtype") or values.get("torch_dtype")
    model, tokenizer = load(folder, dtype=dtype if dtype in ("float32", "bfloat16", "float16") else None)
    adapter = adapter_for(model.config)
    source_params = sum(p.numel() for p in model.parameters())
    rewritten, added_q, added_kv = [], 0, 0
    for index, layer in enumerate(adapter.layers(model)):
        if regular_group_size(layer_query_to_kv(layer)) is None and not adapter.heads_independent:
            raise ExportError(
                f"layer {index} of this {model.config.model_type} model gives its key/value heads uneven numbers of "
                "query heads, and vLLM cannot run that exactly here: the family's q/k norms span every head, so a "
                "zero or copied head changes them; prune it with --gqa group (whole key/value groups) to serve it"
            )
        added = regularise_layer(adapter, layer)
        if added is not None:
            rewritten.append(index)
            added_q += added[0]
            added_kv += added[1]
    adapter.sync_config(model)
    save(model, tokenizer, None, output, overwrite=overwrite)
    layers = adapter.layers(model)
    attention = [adapter.attention(layer) for layer in layers]
    heads = [parts.num_heads for parts in attention]
    kv_heads = [parts.num_kv_heads for parts in attention]
    widths = [adapter.mlp(layer).width for layer in layers]
    notes = []
    if rewritten:
        notes.append(
            f"{len(rewritten)} layers regrouped exactly: {added_q} zero query heads and {added_kv} copied key/value "
            "heads added (vLLM's attention needs equal consecutive groups)"
        )
    return VllmReport(
        output=str(output),
        layers_rewritten=rewritten,
        heads=heads,
        kv_heads=kv_heads,
        ffn_widths=widths,
        added_query_heads=added_q,
        added_kv_heads=added_kv,
        source_params=source_params,
        written_params=sum(p.numel() for p in model.parameters()),
        tensor_parallel_sizes=tensor_parallel_sizes(heads, kv_heads, widths),
        notes=notes,
    )
