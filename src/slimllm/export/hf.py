"""Export a pruned folder as a stock ``LlamaForCausalLM``/``MistralForCausalLM``/``Qwen2ForCausalLM``.

Stock classes have one shape for every layer and regular grouped-query attention (query head i
reads kv head i // g). The export is exact and compact when the pruned model already has that form
(``--uniform --gqa group``); otherwise every layer is rewritten with one group size g shared by
all layers (kv heads copied, empty query slots zero) and zero-padded to the widest layer: the
padded heads and FFN channels contribute exactly zero, so the logits are unchanged, but the
model is as large and as slow as its widest layer allows. Biases left by the regression
(``o_proj``, ``down_proj``) go through ``attention_bias``/``mlp_bias``, which only
``LlamaForCausalLM`` has: a Qwen2 or Mistral model with them is written as LLaMA (Qwen2's
q/k/v biases are LLaMA's ``attention_bias`` too), provided it uses no sliding window.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimllm.export.source import (
    FAMILIES,
    ExportError,
    SourceModel,
    decoder_parameters,
    gather_heads,
    load_source,
    regroup,
)
from slimllm.models import adapter_class

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)
# config.json keys that only slimllm's class reads
SLIMLLM_KEYS = ("layer_shapes", "qkv_bias", "auto_map", "architectures", "model_type", "transformers_version", "dtype")
ARCHITECTURES = {family: adapter_class(family).hf_architecture for family in FAMILIES}


@dataclass
class HFReport:
    output: str
    architecture: str
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    group_size: int
    exact_shape: bool  # no layer needed padding or regrouping
    source_decoder_params: int
    written_decoder_params: int
    written_params: int
    dense_params: int | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _copies(query_to_kv: list[int], group: int) -> int:
    counts: dict[int, int] = {}
    for kv in query_to_kv:
        counts[kv] = counts.get(kv, 0) + 1
    return sum(math.ceil(s / group) for s in counts.values())


def choose_shape(maps: list[list[int]]) -> tuple[int, int]:
    """``(group, num_kv_heads)`` shared by all layers with the fewest heads in total."""
    largest = max((max(map_.count(kv) for kv in set(map_)) for map_ in maps if map_), default=1)
    best = None
    for group in range(1, largest + 1):
        n_kv = max([1, *(_copies(map_, group) for map_ in maps)])
        key = (group * n_kv + n_kv, group * n_kv, -group)
        if best is None or key < best[0]:
            best = (key, group, n_kv)
    return best[1], best[2]


def _architecture(src: SourceModel, biases: set[str], ignore_sliding_window: bool) -> tuple[str, list[str]]:
    """The stock family to write and notes; raise when no stock class can hold the model."""
    notes: list[str] = []
    window = src.sliding_window()
    extra = biases - ({"q", "k", "v"} if src.family == "qwen2" else set())
    family = src.family if src.family == "llama" or not extra else "llama"
    if family != src.family:  # regression biases need LLaMA's attention_bias/mlp_bias
        names = ", ".join(sorted(f"{b}_proj" for b in extra))
        notes.append(f"written as LlamaForCausalLM: {ARCHITECTURES[src.family]} has no bias on {names}")
    if family == "llama" and window is not None:
        if window < int(src.config.get("max_position_embeddings", 0) or 0) and not ignore_sliding_window:
            raise ExportError(
                f"this {src.family} model uses sliding-window attention (window {window}), which LlamaForCausalLM "
                f"lacks{' (needed for its ' + names + ' biases)' if family != src.family else ''}; pass "
                f"--ignore-sliding-window to write a LLaMA model capped at {window} tokens, where it is exact"
            )
        notes.append(f"sliding window {window} dropped: max_position_embeddings capped at {window}, exact up to it")
    return family, notes


def _config(src: SourceModel, family: str, heads: int, kv: int, ffn: int, biases: set[str], dtype) -> dict:
    import transformers

    fields = {k: v for k, v in src.config.items() if k not in SLIMLLM_KEYS and not k.startswith("_")}
    fields.update(
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=src.head_dim,
        intermediate_size=ffn,
        tie_word_embeddings=src.lm_head is None,
    )
    if family == "llama":
        for key in ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types"):
            fields.pop(key, None)
        window = src.sliding_window()
        if window is not None:
            fields["max_position_embeddings"] = min(window, int(fields.get("max_position_embeddings", window)))
        fields["attention_bias"] = bool(biases & {"q", "k", "v", "o"})
        fields["mlp_bias"] = bool(biases & {"gate", "up", "down"})
    else:
        fields.pop("attention_bias", None)
        fields.pop("mlp_bias", None)
    config = transformers.AutoConfig.for_model(family, **fields)
    config.architectures = [ARCHITECTURES[family]]
    config.dtype = dtype
    return config


def export_hf(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: str | None = None,
    ignore_sliding_window: bool = False,
) -> HFReport:
    """Write ``folder`` as a stock transformers folder (no slimllm, no remote code needed)."""
    from safetensors.torch import save_file

    from slimllm.io import atomic_output_dir, resolve_dtype

    src = load_source(folder)
    torch_dtype = resolve_dtype(dtype) or torch.float32
    hd, hidden = src.head_dim, src.hidden_size
    biases = {key for layer in src.layers for key in layer.bias}
    family, notes = _architecture(src, biases, ignore_sliding_window)
    maps = [layer.query_to_kv for layer in src.layers]
    group, n_kv = choose_shape(maps)
    n_q = group * n_kv
    ffn = max([1, *(layer.ffn_width for layer in src.layers)])

    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": src.embed}
    exact = True
    for i, layer in enumerate(src.layers):
        plan = regroup(layer.query_to_kv, group, num_kv_heads=n_kv)
        regular = plan.query_src == list(range(layer.num_heads)) and plan.kv_src == list(range(layer.num_kv_heads))
        exact &= regular and layer.ffn_width == ffn
        p = f"model.layers.{i}."
        zeros_q = torch.zeros(layer.num_heads * hd, hidden)
        zeros_kv = torch.zeros(layer.num_kv_heads * hd, hidden)
        q = gather_heads(layer.q if layer.q is not None else zeros_q, plan.query_src, hd)
        k = gather_heads(layer.k if layer.k is not None else zeros_kv, plan.kv_src, hd)
        v = gather_heads(layer.v if layer.v is not None else zeros_kv, plan.kv_src, hd)
        o = gather_heads(layer.o if layer.o is not None else zeros_q.T, plan.query_src, hd, dim=1)
        tensors |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k}
        tensors |= {p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": o}
        if family == "qwen2" or (family == "llama" and biases & {"q", "k", "v", "o"}):
            for key, src_list in (("q", plan.query_src), ("k", plan.kv_src), ("v", plan.kv_src)):
                heads = layer.num_heads if key == "q" else layer.num_kv_heads
                bias = layer.bias.get(key, torch.zeros(heads * hd))
                tensors[f"{p}self_attn.{key}_proj.bias"] = gather_heads(bias, src_list, hd)
            if family == "llama":
                tensors[p + "self_attn.o_proj.bias"] = layer.bias.get("o", torch.zeros(hidden))
        width = layer.ffn_width
        tensors[p + "mlp.gate_proj.weight"] = _pad(layer.gate, ffn, 0)
        tensors[p + "mlp.up_proj.weight"] = _pad(layer.up, ffn, 0)
        tensors[p + "mlp.down_proj.weight"] = _pad(layer.down, ffn, 1)
        if family == "llama" and biases & {"gate", "up", "down"}:
            tensors[p + "mlp.gate_proj.bias"] = _pad(layer.bias.get("gate", torch.zeros(width)), ffn, 0)
            tensors[p + "mlp.up_proj.bias"] = _pad(layer.bias.get("up", torch.zeros(width)), ffn, 0)
            tensors[p + "mlp.down_proj.bias"] = layer.bias.get("down", torch.zeros(hidden))
        tensors[p + "input_layernorm.weight"] = layer.attn_norm
        tensors[p + "post_attention_layernorm.weight"] = layer.ffn_norm
    tensors["model.norm.weight"] = src.norm
    if src.lm_head is not None:
        tensors["lm_head.weight"] = src.lm_head

    source_params = decoder_parameters(src.layers)
    written_decoder = sum(t.numel() for name, t in tensors.items() if name.startswith("model.layers."))
    written = sum(t.numel() for t in tensors.values())
    dense = _dense_params(src.folder)
    if not exact:
        notes.append(
            f"layers differ in shape: every layer padded to {n_q} query / {n_kv} kv heads (group {group}) and FFN "
            f"width {ffn}; the decoder has {written_decoder:,} parameters where the pruned model has "
            f"{source_params:,} (+{written_decoder / source_params - 1:.1%})"
            + (f", against {dense:,} for the whole dense model ({written:,} written)" if dense else "")
            + ". The padded model computes the same logits but is no smaller or faster than its widest layer "
            "allows: use the slimllm folder or the GGUF export to gain speed, or prune with --uniform --gqa group"
        )
    elif written_decoder > source_params:
        notes.append(
            f"{written_decoder - source_params:,} zero bias parameters added: LLaMA's attention_bias and mlp_bias put "
            "a bias on every projection, the regression only on o_proj and down_proj"
        )
    report = HFReport(
        output=str(output),
        architecture=ARCHITECTURES[family],
        num_attention_heads=n_q,
        num_key_value_heads=n_kv,
        intermediate_size=ffn,
        group_size=group,
        exact_shape=exact,
        source_decoder_params=source_params,
        written_decoder_params=written_decoder,
        written_params=written,
        dense_params=dense,
        notes=notes,
    )
    config = _config(src, family, n_q, n_kv, ffn, biases, torch_dtype)
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        save_file(
            {name: t.to(torch_dtype).contiguous() for name, t in tensors.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        config.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (src.folder / name).is_file():
                shutil.copyfile(src.folder / name, tmp / name)
        (tmp / "slimllm_export.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _pad(weight: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    extra = size - weight.shape[dim]
    if extra == 0:
        return weight
    shape = list(weight.shape)
    shape[dim] = extra
    return torch.cat([weight, weight.new_zeros(shape)], dim=dim)


def _dense_params(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "slimllm_report.json").read_text())["params"]["dense"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
