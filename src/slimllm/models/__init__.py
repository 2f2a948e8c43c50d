"""Model-family adapters: the only place that knows a family's config fields and module names.

Every supported family is converted into the one pruned-model class
(:class:`slimllm.modeling.SlimLlamaForCausalLM`) before pruning; the algorithm then reaches
layers, projections and norms through :class:`ModelAdapter` alone.
"""

from __future__ import annotations

from slimllm.models.base import ModelAdapter, UnsupportedModelError
from slimllm.models.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, SlimLlamaAdapter

_ADAPTERS: dict[str, type[ModelAdapter]] = {
    adapter.model_type: adapter for adapter in (LlamaAdapter, MistralAdapter, Qwen2Adapter, SlimLlamaAdapter)
}


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(config) -> ModelAdapter:
    """The adapter for a transformers config, chosen by ``config.model_type`` only."""
    model_type = getattr(config, "model_type", None)
    try:
        return _ADAPTERS[model_type]()
    except KeyError:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r}; slimllm supports: {', '.join(supported_model_types())}"
        ) from None


__all__ = ["ModelAdapter", "UnsupportedModelError", "adapter_for", "supported_model_types"]
