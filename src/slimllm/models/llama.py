"""LLaMA-layout families: LLaMA 1/2/3 (and Vicuna, SmolLM2), Mistral, Qwen2, Qwen3."""

from __future__ import annotations

from slimllm.models.base import ModelAdapter, UnsupportedModelError


class LlamaAdapter(ModelAdapter):
    """LLaMA 1/2/3.x (RoPE scaling is the stock rotary embedding's business)."""

    model_type = "llama"
    hf_architecture = "LlamaForCausalLM"
    export_refusal = None

    def check_supported(self, config) -> None:
        super().check_supported(config)
        if (getattr(config, "pretraining_tp", 1) or 1) > 1:
            raise UnsupportedModelError("LLaMA checkpoints with pretraining_tp > 1 are not supported")


class MistralAdapter(ModelAdapter):
    model_type = "mistral"
    hf_architecture = "MistralForCausalLM"
    export_refusal = None


class Qwen2Adapter(ModelAdapter):
    """Qwen2: q/k/v carry biases (sliced with their heads), o_proj does not."""

    model_type = "qwen2"
    hf_architecture = "Qwen2ForCausalLM"
    export_refusal = None


class Qwen3Adapter(ModelAdapter):
    """Qwen3: per-head q/k RMS norms over the head dimension, shared by all heads: untouched."""

    model_type = "qwen3"
    export_refusal = "its per-head q/k RMS norms have no place in llama.cpp's deci layer nor in a stock LLaMA one"
