"""Model-family adapters: the only place that knows a family's config fields and module names.

A pruned model is its family's stock transformers model with per-layer shapes
(:mod:`slimllm.modeling`); the algorithm reaches layers, projections and norms through
:class:`ModelAdapter` alone.
"""

from __future__ import annotations

from slimllm.modeling import MODEL_TYPE_PREFIX
from slimllm.models.base import ModelAdapter, UnsupportedModelError
from slimllm.models.gemma import Gemma2Adapter, Gemma3TextAdapter
from slimllm.models.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter
from slimllm.models.olmo2 import Olmo2Adapter
from slimllm.models.phi3 import Phi3Adapter

_ADAPTERS: dict[str, type[ModelAdapter]] = {
    adapter.model_type: adapter
    for adapter in (
        LlamaAdapter,
        MistralAdapter,
        Qwen2Adapter,
        Qwen3Adapter,
        Gemma2Adapter,
        Gemma3TextAdapter,
        Phi3Adapter,
        Olmo2Adapter,
    )
}


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def family_of(config) -> str | None:
    """The stock ``model_type`` of a config, or of the family a pruned model came from."""
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type.startswith(MODEL_TYPE_PREFIX):
        return model_type[len(MODEL_TYPE_PREFIX) :]
    return model_type


def adapter_class(family: str) -> type[ModelAdapter] | None:
    """The adapter class of a stock ``model_type``, or None if slimllm does not know it."""
    return _ADAPTERS.get(family)


def adapter_for(config) -> ModelAdapter:
    """The adapter for a transformers config (stock or pruned), chosen by ``config.model_type`` only."""
    family = family_of(config)
    try:
        return _ADAPTERS[family]()
    except KeyError:
        raise UnsupportedModelError(
            f"unsupported model_type {getattr(config, 'model_type', None)!r}; "
            f"slimllm supports: {', '.join(supported_model_types())}"
        ) from None


__all__ = [
    "ModelAdapter",
    "UnsupportedModelError",
    "adapter_class",
    "adapter_for",
    "family_of",
    "supported_model_types",
]
