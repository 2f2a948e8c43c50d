"""LLaMA-layout families: LLaMA 1/2/3 (and Vicuna, SmolLM2), Mistral, Qwen2, and our own class."""

from __future__ import annotations

from slimllm.modeling import SlimLlamaConfig
from slimllm.models.base import ModelAdapter, UnsupportedModelError

# Config fields every family in this file shares with LlamaConfig.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_dropout",
    "head_dim",
)


def _shared(config) -> dict:
    values = {name: getattr(config, name, None) for name in _SHARED_FIELDS}
    if values["head_dim"] is None:
        values["head_dim"] = config.hidden_size // config.num_attention_heads
    if values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = config.num_attention_heads
    values["dtype"] = getattr(config, "dtype", None)
    return {key: value for key, value in values.items() if value is not None}


def _check_activation(config) -> None:
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu"):
        raise UnsupportedModelError(f"unsupported FFN activation {config.hidden_act!r}")


class LlamaAdapter(ModelAdapter):
    model_type = "llama"

    def check_supported(self, config) -> None:
        _check_activation(config)
        if (getattr(config, "pretraining_tp", 1) or 1) > 1:
            raise UnsupportedModelError("LLaMA checkpoints with pretraining_tp > 1 are not supported")

    def slim_config(self, config) -> SlimLlamaConfig:
        bias = bool(getattr(config, "attention_bias", False))
        return SlimLlamaConfig(
            **_shared(config),
            attention_bias=bias,
            qkv_bias=bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )


class MistralAdapter(ModelAdapter):
    model_type = "mistral"

    def check_supported(self, config) -> None:
        _check_activation(config)

    def slim_config(self, config) -> SlimLlamaConfig:
        return SlimLlamaConfig(**_shared(config), sliding_window=getattr(config, "sliding_window", None))


class Qwen2Adapter(ModelAdapter):
    """Qwen2: q/k/v carry biases, o_proj does not; sliding window only on some layers."""

    model_type = "qwen2"

    def check_supported(self, config) -> None:
        _check_activation(config)

    def slim_config(self, config) -> SlimLlamaConfig:
        return SlimLlamaConfig(
            **_shared(config),
            attention_bias=False,
            qkv_bias=True,
            sliding_window=getattr(config, "sliding_window", None),
            layer_types=list(config.layer_types),
        )


class SlimLlamaAdapter(ModelAdapter):
    """A model slimllm already pruned (or converted): pruning it again starts from its shapes."""

    model_type = SlimLlamaConfig.model_type

    def slim_config(self, config) -> SlimLlamaConfig:
        return SlimLlamaConfig(**config.to_dict())
