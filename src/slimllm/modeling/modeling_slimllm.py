"""Pruned models built from each family's own transformers modules.

A pruned model is the family's stock ``XForCausalLM``: embeddings, rotary embeddings, masks,
KV cache, generation and attention kernels are all transformers' own. Only the decoder layers
differ: each pruned layer is the family's stock decoder layer, built from a per-layer view of the
config (:class:`LayerConfig`) that gives it its own query heads, key/value heads and FFN width,
with a bias on ``o_proj``/``down_proj`` where the regression recovery put one.

What stock modules cannot express is one thing: a key/value head serving an uneven number of
query heads (``--gqa query`` leaves maps like ``[0, 0, 1, 2, 2]``). Such layers route their
attention through one registered attention function, ``slimllm_uneven_gqa``, that gathers each
query head's key/value head and hands over to the model's configured implementation (sdpa,
eager, flash, ...). The KV cache keeps the layer's own key/value heads, never the copies.

Each family also gets its base model with per-layer shapes (``SlimLlamaModel``, ...: the decoder
without its head), the ``AutoModel`` that vLLM's Transformers backend builds.

This file is self-contained on purpose: ``slimllm.save`` copies it next to the weights and points
``config.json``'s ``auto_map`` at it, so ``trust_remote_code=True`` loads a pruned model on a
machine without slimllm. It may import only ``torch`` and ``transformers``.

Per-layer shape record (``config.layer_shapes``, one entry per layer, ``None`` for a dense one)::

    {"query_to_kv": [0, 0, 1, 2], "intermediate_size": 1200,
     "o_proj_bias": true, "down_proj_bias": true}

``query_to_kv[i]`` is the index, among the layer's kept key/value heads, of query head ``i``'s
key/value head.
"""

from __future__ import annotations

import importlib
import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

MODEL_TYPE_PREFIX = "slimllm_"
UNEVEN_GQA = "slimllm_uneven_gqa"

# family model_type -> (transformers.models module, config, causal LM, base model, decoder layer)
FAMILIES = {
    "llama": ("llama", "LlamaConfig", "LlamaForCausalLM", "LlamaModel", "LlamaDecoderLayer"),
    "mistral": ("mistral", "MistralConfig", "MistralForCausalLM", "MistralModel", "MistralDecoderLayer"),
    "qwen2": ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "Qwen2Model", "Qwen2DecoderLayer"),
    "qwen3": ("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "Qwen3Model", "Qwen3DecoderLayer"),
    "gemma2": ("gemma2", "Gemma2Config", "Gemma2ForCausalLM", "Gemma2Model", "Gemma2DecoderLayer"),
    "gemma3_text": ("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", "Gemma3TextModel", "Gemma3DecoderLayer"),
    "phi3": ("phi3", "Phi3Config", "Phi3ForCausalLM", "Phi3Model", "Phi3DecoderLayer"),
    "olmo2": ("olmo2", "Olmo2Config", "Olmo2ForCausalLM", "Olmo2Model", "Olmo2DecoderLayer"),
}


class LayerConfig:
    """One decoder layer's view of the model config: its own shape over the shared config.

    Reads fall through to the model's config, so settings changed on the model later (the
    attention implementation above all) reach every layer.
    """

    __slots__ = ("base", "overrides")

    def __init__(self, base, overrides: dict | None = None):
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "overrides", dict(overrides or {}))

    def __getattr__(self, name):
        if name.startswith("__") or name in LayerConfig.__slots__:
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "base"), name)

    def __setattr__(self, name, value):
        self.overrides[name] = value

    def __reduce__(self):
        return (LayerConfig, (self.base, self.overrides))


def dense_query_to_kv(config) -> list[int]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return [i // (heads // kv_heads) for i in range(heads)]


def regular_group_size(query_to_kv: list[int]) -> int | None:
    """g if query head i uses key/value head i // g for every i (stock GQA can run it), else None."""
    num_kv = max(query_to_kv) + 1
    if len(query_to_kv) % num_kv:
        return None
    group = len(query_to_kv) // num_kv
    return group if list(query_to_kv) == [i // group for i in range(len(query_to_kv))] else None


def _base_config(config):
    return config.base if isinstance(config, LayerConfig) else config


def _resized_linear(linear: nn.Linear, bias: bool) -> nn.Linear:
    """The same Linear with or without a bias (a new zero bias where one is added)."""
    if (linear.bias is not None) == bias:
        return linear
    new = nn.Linear(
        linear.in_features, linear.out_features, bias=bias, device=linear.weight.device, dtype=linear.weight.dtype
    )
    new.weight = linear.weight
    if bias and new.bias.device.type != "meta":
        with torch.no_grad():
            new.bias.zero_()
    return new


def _shape_overrides(shape: dict, head_dim: int) -> dict:
    """The config fields a layer with this shape record reads differently from the model's."""
    return {
        "num_attention_heads": len(shape["query_to_kv"]),
        "num_key_value_heads": max(shape["query_to_kv"]) + 1,
        "head_dim": head_dim,
        "intermediate_size": int(shape["intermediate_size"]),
    }


def configure_layer(layer: nn.Module, shape: dict) -> None:
    """Make a stock decoder layer whose projections have ``shape``'s sizes run with that shape.

    Called when a pruned layer is built and again after surgery replaces its projections.
    """
    attn, mlp = layer.self_attn, layer.mlp
    base = _base_config(attn.config)
    query_to_kv = [int(kv) for kv in shape["query_to_kv"]]
    num_kv = max(query_to_kv) + 1
    if sorted(set(query_to_kv)) != list(range(num_kv)):
        raise ValueError(f"layer {attn.layer_idx}: query_to_kv {query_to_kv} leaves a key/value head unused")
    group = regular_group_size(query_to_kv)
    overrides = _shape_overrides(shape, attn.head_dim)
    if group is None:
        overrides["_attn_implementation"] = UNEVEN_GQA
    layer_config = LayerConfig(base, overrides)
    attn.config = layer_config
    if hasattr(mlp, "config"):
        mlp.config = layer_config
    attn.num_key_value_groups = group or 1
    for name, value in (("num_key_value_heads", num_kv), ("num_heads", len(query_to_kv))):
        if hasattr(attn, name):
            setattr(attn, name, value)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = overrides["intermediate_size"]
    attn.slimllm_query_to_kv = query_to_kv
    attn.slimllm_kv_index = {}
    attn.o_proj = _resized_linear(attn.o_proj, bool(shape["o_proj_bias"]))
    mlp.down_proj = _resized_linear(mlp.down_proj, bool(shape["down_proj_bias"]))


def layer_query_to_kv(layer: nn.Module) -> list[int]:
    attn = layer.self_attn
    return list(getattr(attn, "slimllm_query_to_kv", None) or dense_query_to_kv(attn.config))


def layer_shape_record(layer: nn.Module) -> dict:
    """This layer's entry for ``config.layer_shapes``, read off its modules."""
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "query_to_kv": layer_query_to_kv(layer),
        "intermediate_size": mlp.down_proj.in_features,
        "o_proj_bias": attn.o_proj.bias is not None,
        "down_proj_bias": mlp.down_proj.bias is not None,
    }


def _uneven_gqa_attention(module, query, key, value, attention_mask, **kwargs):
    """Give each query head its own key/value head, then run the model's attention implementation."""
    index = module.slimllm_kv_index.get(key.device)
    if index is None:
        index = torch.tensor(module.slimllm_query_to_kv, dtype=torch.long, device=key.device)
        module.slimllm_kv_index[key.device] = index
    key, value = key.index_select(1, index), value.index_select(1, index)
    implementation = module.config.base._attn_implementation
    if implementation in (None, "eager"):  # each family has its own eager function (soft-capping, sinks, ...)
        attention = sys.modules[type(module).__module__].eager_attention_forward
    else:
        attention = ALL_ATTENTION_FUNCTIONS[implementation]
    return attention(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(UNEVEN_GQA, _uneven_gqa_attention)


def legacy_family(values: dict) -> str | None:
    """The family a ``slimllm_llama`` config written by slimllm 0.1 came from (it saved all as LLaMA)."""
    if values.get("model_type") != MODEL_TYPE_PREFIX + "llama" or "qkv_bias" not in values:
        return None
    if values.get("qkv_bias") and not values.get("attention_bias"):
        return "qwen2"
    if values.get("sliding_window") is not None:
        return "mistral"
    return "llama"


def _build_pruned_layers(decoder: nn.Module, layer_class: type) -> None:
    """Replace the stock decoder's layers named in ``config.layer_shapes`` by layers of those shapes."""
    config = decoder.config
    family = legacy_family({"model_type": config.model_type, **vars(config)})
    if family not in (None, "llama"):
        raise ValueError(
            f"this folder was written by slimllm 0.1 from a {family} model; load it with slimllm.load(folder), "
            "which converts it"
        )
    shapes = config.layer_shapes or []
    if len(shapes) not in (0, config.num_hidden_layers):
        raise ValueError(f"layer_shapes has {len(shapes)} entries for {config.num_hidden_layers} layers")
    layers = decoder.layers
    for index, shape in enumerate(shapes):
        if shape is None:
            continue
        layer_config = LayerConfig(config, _shape_overrides(shape, layers[index].self_attn.head_dim))
        device = layers[index].self_attn.o_proj.weight.device
        with torch.device(device):
            layer = layer_class(layer_config, index)
        configure_layer(layer, shape)
        layers[index] = layer


def _define(family: str) -> tuple[type, type, type]:
    """The config, causal-LM and base-model classes of the pruned models of one family.

    The base model (``AutoModel``) is what serving engines that build on transformers' modules
    instantiate (vLLM's Transformers backend); the causal LM is what ``from_pretrained`` loads.
    """
    module_name, config_name, model_name, base_name, layer_name = FAMILIES[family]
    module = importlib.import_module(f"transformers.models.{module_name}")
    stock_config, stock_model = getattr(module, config_name), getattr(module, model_name)
    stock_base = getattr(module, base_name)
    modeling = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    layer_class = getattr(modeling, layer_name)
    prefix = model_name[: -len("ForCausalLM")]

    config_class = type(
        f"Slim{prefix}Config",
        (stock_config,),
        {
            "__module__": __name__,
            "__doc__": f"{config_name} plus ``layer_shapes``: the shape of each pruned decoder layer.",
            "__annotations__": {"layer_shapes": "list | None"},
            "model_type": MODEL_TYPE_PREFIX + family,
            "layer_shapes": None,
        },
    )

    def __init__(self, config):
        stock_model.__init__(self, config)
        _build_pruned_layers(self.model, layer_class)
        self.post_init()

    def base_init(self, config):
        stock_base.__init__(self, config)
        _build_pruned_layers(self, layer_class)
        self.post_init()

    base_class = type(
        f"Slim{base_name}",
        (stock_base,),
        {
            "__module__": __name__,
            "__doc__": f"{stock_base.__name__} whose decoder layers each have their own heads and FFN width.",
            "__init__": base_init,
            "config_class": config_class,
        },
    )

    model_class = type(
        f"Slim{prefix}ForCausalLM",
        (stock_model,),
        {
            "__module__": __name__,
            "__doc__": f"{model_name} whose decoder layers each have their own heads and FFN width.",
            "__init__": __init__,
            "config_class": config_class,
        },
    )
    return config_class, model_class, base_class


# slimllm model_type -> (config, causal-LM, base-model class); ``auto_map`` in saved folders names them.
PRUNED_CLASSES = {MODEL_TYPE_PREFIX + family: _define(family) for family in FAMILIES}
globals().update({cls.__name__: cls for classes in PRUNED_CLASSES.values() for cls in classes})
SlimLlamaConfig, SlimLlamaForCausalLM, SlimLlamaModel = PRUNED_CLASSES[MODEL_TYPE_PREFIX + "llama"]

__all__ = [
    "FAMILIES",
    "PRUNED_CLASSES",
    "LayerConfig",
    "SlimLlamaConfig",
    "SlimLlamaForCausalLM",
    "SlimLlamaModel",
    "configure_layer",
    "layer_query_to_kv",
    "layer_shape_record",
    "legacy_family",
]
