"""The pruned-model class (per-layer head maps and widths), registered with the Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from slimllm.modeling.modeling_slimllm import (
    MODEL_TYPE,
    SlimLlamaConfig,
    SlimLlamaForCausalLM,
    SlimLlamaModel,
)

AutoConfig.register(MODEL_TYPE, SlimLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(SlimLlamaConfig, SlimLlamaForCausalLM, exist_ok=True)

__all__ = ["MODEL_TYPE", "SlimLlamaConfig", "SlimLlamaForCausalLM", "SlimLlamaModel"]
