"""vLLM plugin: serve slimllm's pruned folders with vLLM's Transformers backend.

vLLM loads this through its ``vllm.general_plugins`` entry point in every process it starts, so
``vllm serve FOLDER`` works wherever slimllm is installed next to vLLM. It does three things:

- registers the pruned model classes with transformers' Auto classes (``import slimllm.modeling``),
  so vLLM builds ``AutoModel.from_config`` (the family's stock decoder with per-layer shapes)
  without remote code;
- points each pruned architecture (``SlimLlamaForCausalLM``, ...) at vLLM's
  ``TransformersForCausalLM``, which swaps every ``nn.Linear`` for vLLM's parallel layers and
  routes attention through vLLM's paged KV cache;
- tells vLLM each layer's own query heads and key/value heads (a model-architecture convertor
  whose ``get_per_layer_hf_configs`` reads ``config.layer_shapes``), so the attention layers and
  the KV cache of every layer get that layer's sizes.

vLLM's attention needs every key/value head to serve the same number of consecutive query heads.
Folders whose layers do not (``--gqa query`` leaves maps like ``[0, 0, 1]``) are refused with the
command that rewrites them: ``slimllm export FOLDER --to vllm``.

This module imports vLLM only inside :func:`register`; importing slimllm never needs vLLM.
"""

from __future__ import annotations

import copy

from slimllm.modeling.modeling_slimllm import PRUNED_CLASSES, regular_group_size

TRANSFORMERS_BACKEND = "vllm.model_executor.models.transformers:TransformersForCausalLM"


class IrregularHeadsError(ValueError):
    """A pruned folder has a layer whose key/value heads serve uneven numbers of query heads."""


def irregular_layers(layer_shapes) -> list[int]:
    """Indices of the layers vLLM's attention cannot run as they are (uneven query -> kv maps)."""
    return [
        index
        for index, shape in enumerate(layer_shapes or [])
        if shape is not None and regular_group_size([int(kv) for kv in shape["query_to_kv"]]) is None
    ]


def layer_configs(config) -> list | None:
    """One config per decoder layer with that layer's heads, key/value heads and FFN width.

    ``None`` for a folder whose layers all keep the dense shape.
    """
    shapes = getattr(config, "layer_shapes", None)
    if not shapes or all(shape is None for shape in shapes):
        return None
    if irregular := irregular_layers(shapes):
        raise IrregularHeadsError(
            f"layers {irregular} of this pruned model give their key/value heads uneven numbers of query "
            "heads, which vLLM's attention cannot run; write a vLLM-ready copy with "
            "`slimllm export FOLDER --to vllm --output NEW_FOLDER`"
        )
    configs = []
    for shape in shapes:
        if shape is None:
            configs.append(config)
            continue
        layer = copy.copy(config)
        layer.num_attention_heads = len(shape["query_to_kv"])
        layer.num_key_value_heads = max(shape["query_to_kv"]) + 1
        layer.intermediate_size = int(shape["intermediate_size"])
        layer.layer_shapes = None
        configs.append(layer)
    return configs


def _convertor_class():
    from vllm.transformers_utils.model_arch_config_convertor import ModelArchConfigConvertorBase

    class PrunedModelArchConfigConvertor(ModelArchConfigConvertorBase):
        """vLLM's view of a pruned model: the whole-model config plus each layer's own sizes."""

        def get_per_layer_hf_configs(self):
            configs = layer_configs(self.hf_text_config)
            return None if configs is None else [(layer, layer) for layer in configs]

    return PrunedModelArchConfigConvertor


def register() -> None:
    """The ``vllm.general_plugins`` entry point (vLLM may call it more than once per process)."""
    from vllm import ModelRegistry
    from vllm.transformers_utils import model_arch_config_convertor

    import slimllm.modeling  # noqa: F401  (registers the Auto classes)

    convertor = _convertor_class()
    for model_type, (_, model_class, _) in PRUNED_CLASSES.items():
        ModelRegistry.register_model(model_class.__name__, TRANSFORMERS_BACKEND)
        model_arch_config_convertor.MODEL_ARCH_CONFIG_CONVERTORS.setdefault(model_type, convertor)
