"""Pruned models: each family's stock transformers model with per-layer shapes, registered with
the Auto classes so ``AutoModelForCausalLM.from_pretrained`` loads folders written by slimllm."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from slimllm.modeling.modeling_slimllm import (
    MODEL_TYPE_PREFIX,
    PRUNED_CLASSES,
    LayerConfig,
    SlimLlamaConfig,
    SlimLlamaForCausalLM,
    configure_layer,
    layer_query_to_kv,
    layer_shape_record,
    legacy_family,
    regular_group_size,
)

for _model_type, (_config_class, _model_class, _base_class) in PRUNED_CLASSES.items():
    AutoConfig.register(_model_type, _config_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)
    AutoModel.register(_config_class, _base_class, exist_ok=True)


def is_pruned_config(config) -> bool:
    return str(getattr(config, "model_type", "")).startswith(MODEL_TYPE_PREFIX)


def pruned_classes(family: str) -> tuple[type, type]:
    """The (config, model) classes of pruned models of a family (its stock ``model_type``)."""
    config_class, model_class, _ = PRUNED_CLASSES[MODEL_TYPE_PREFIX + family]
    return config_class, model_class


__all__ = [
    "MODEL_TYPE_PREFIX",
    "PRUNED_CLASSES",
    "LayerConfig",
    "SlimLlamaConfig",
    "SlimLlamaForCausalLM",
    "configure_layer",
    "is_pruned_config",
    "layer_query_to_kv",
    "layer_shape_record",
    "legacy_family",
    "pruned_classes",
    "regular_group_size",
]
