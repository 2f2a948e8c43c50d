"""LLaMA-layout families: LLaMA 1/2/3 (and Vicuna, SmolLM2), Mistral, Qwen2."""

from __future__ import annotations

from slimllm.models.base import ModelAdapter, UnsupportedModelError

_GATED_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")


def _check_activation(config) -> None:
    if getattr(config, "hidden_act", "silu") not in _GATED_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported FFN activation {config.hidden_act!r}")


class LlamaAdapter(ModelAdapter):
    model_type = "llama"

    def check_supported(self, config) -> None:
        _check_activation(config)
        if (getattr(config, "pretraining_tp", 1) or 1) > 1:
            raise UnsupportedModelError("LLaMA checkpoints with pretraining_tp > 1 are not supported")


class MistralAdapter(ModelAdapter):
    model_type = "mistral"

    def check_supported(self, config) -> None:
        _check_activation(config)


class Qwen2Adapter(ModelAdapter):
    """Qwen2: q/k/v carry biases (sliced with their heads), o_proj does not."""

    model_type = "qwen2"

    def check_supported(self, config) -> None:
        _check_activation(config)
