"""The adapter interface: how the algorithm names the parts of a decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimllm.modeling import SlimLlamaConfig, SlimLlamaForCausalLM


class UnsupportedModelError(ValueError):
    """The model's architecture is not one slimllm can prune."""


@dataclass(frozen=True)
class AttentionParts:
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    head_dim: int
    query_to_kv: list[int]

    @property
    def num_heads(self) -> int:
        return len(self.query_to_kv)

    @property
    def num_kv_heads(self) -> int:
        return max(self.query_to_kv) + 1


@dataclass(frozen=True)
class MlpParts:
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear

    @property
    def width(self) -> int:
        return self.down_proj.in_features


class ModelAdapter:
    """Names the pieces of a (converted) decoder for the algorithm.

    Subclasses describe one family: ``model_type`` and :meth:`slim_config`, which maps the
    family's config onto :class:`SlimLlamaConfig`. The accessors below work on the converted
    model, so the pruning code never spells a family-specific attribute.
    """

    model_type: str = ""

    # -- conversion -------------------------------------------------------------------------
    def slim_config(self, config) -> SlimLlamaConfig:
        raise NotImplementedError

    def check_supported(self, config) -> None:
        """Raise :class:`UnsupportedModelError` for configurations of the family we cannot run."""

    def to_slim(self, model: nn.Module) -> SlimLlamaForCausalLM:
        """The same network as a :class:`SlimLlamaForCausalLM`, sharing (not copying) its weights.

        New ``Parameter`` objects wrap the original storage, so moving or replacing a converted
        module never touches the caller's model.
        """
        self.check_supported(model.config)
        config = self.slim_config(model.config)
        config._attn_implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"
        with torch.device("meta"):
            slim = SlimLlamaForCausalLM(config)
        state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        missing, unexpected = slim.load_state_dict(state, strict=False, assign=True)
        missing = [key for key in missing if not (config.tie_word_embeddings and key == "lm_head.weight")]
        if missing or unexpected:
            raise UnsupportedModelError(
                f"{model.config.model_type}: weights do not match the LLaMA layout "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
            )
        if config.tie_word_embeddings:
            slim.lm_head.weight = slim.model.embed_tokens.weight
        # Non-persistent buffers (RoPE frequencies) are not in the state dict: rebuild them.
        with torch.device(_device_of(model)):
            slim.model.rotary_emb = type(slim.model.rotary_emb)(config=config)
        slim.eval()
        if hasattr(model, "generation_config"):
            slim.generation_config = model.generation_config
        return slim

    # -- accessors on a converted model ------------------------------------------------------
    def layers(self, model: SlimLlamaForCausalLM) -> nn.ModuleList:
        return model.model.layers

    def embeddings(self, model: SlimLlamaForCausalLM) -> nn.Embedding:
        return model.model.embed_tokens

    def rotary(self, model: SlimLlamaForCausalLM) -> nn.Module:
        return model.model.rotary_emb

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn = layer.self_attn
        return AttentionParts(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.head_dim, attn.query_to_kv)

    def mlp(self, layer: nn.Module) -> MlpParts:
        return MlpParts(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)

    def set_attention(self, layer: nn.Module, *, query_to_kv: list[int] | None = None, **projections) -> None:
        """Install new q/k/v/o projections (any subset) and, with them, a new query->kv map."""
        attn = layer.self_attn
        for name, module in projections.items():
            if name not in ("q_proj", "k_proj", "v_proj", "o_proj"):
                raise KeyError(name)
            setattr(attn, name, module)
        if query_to_kv is not None:
            attn.set_head_map(query_to_kv)

    def set_mlp(self, layer: nn.Module, **projections) -> None:
        for name, module in projections.items():
            if name not in ("gate_proj", "up_proj", "down_proj"):
                raise KeyError(name)
            setattr(layer.mlp, name, module)
        layer.mlp.intermediate_size = layer.mlp.down_proj.in_features

    def sync_config(self, model: SlimLlamaForCausalLM) -> None:
        """Write each layer's current shape into ``config.layer_shapes`` (what save relies on)."""
        model.config.layer_shapes = [layer.shape_record() for layer in self.layers(model)]

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp_module(self, layer: nn.Module) -> nn.Module:
        return layer.mlp


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
