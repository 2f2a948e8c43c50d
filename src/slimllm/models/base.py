"""The adapter interface: how the algorithm names the parts of a decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimllm import offload
from slimllm.modeling import configure_layer, layer_query_to_kv, layer_shape_record, pruned_classes

__all__ = ["AttentionParts", "MlpParts", "ModelAdapter", "UnsupportedModelError", "configure_layer", "copy_buffers"]


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


_GATED_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu")


def check_activation(config) -> None:
    """Every supported family has a gated FFN; refuse activations the pruned classes were not tested with."""
    activation = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None) or "silu"
    if activation not in _GATED_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported FFN activation {activation!r}")


# Keys of a config that describe the checkpoint it came from, not the network.
_PROVENANCE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


class ModelAdapter:
    """Names the pieces of one family's decoder for the algorithm.

    Subclasses set ``model_type`` (the family's stock one) and may refuse configurations the
    family's pruned class cannot run. The pruned model is the family's stock model with
    per-layer shapes (:mod:`slimllm.modeling`); the accessors below work on both, so the
    pruning code never spells a family-specific attribute.
    """

    model_type: str = ""
    # Each head's output depends on its own projections only, so the kept heads' part of the dense
    # attention output is what the pruned attention computes (not so for OLMo 2's q/k norms).
    heads_independent: bool = True
    # o_proj's and down_proj's outputs are added to the residual stream as they are (no norm after
    # them), so a refit of either can aim at the dense model's hidden state (``--recovery ridge-dense``).
    residual_outputs: bool = True
    # Export (slimllm.export): the stock transformers class a ``--to hf`` folder is written as,
    # and the reason the family cannot be exported exactly (None: it can). The exporters write
    # LLaMA's layer: pre-norms, q/k/v/o and gate/up/down, RoPE, SiLU, nothing else.
    hf_architecture: str | None = None
    export_refusal: str | None = "slimllm's exporters write LLaMA-layout layers only"

    # -- conversion -------------------------------------------------------------------------
    def check_supported(self, config) -> None:
        """Raise :class:`UnsupportedModelError` for configurations of the family we cannot run."""
        check_activation(config)

    def pruned_config(self, config):
        """The pruned-model config for ``config`` (a stock one, or a pruned one kept as it is)."""
        config_class, _ = pruned_classes(self.model_type)
        values = {key: value for key, value in config.to_dict().items() if key not in _PROVENANCE_KEYS}
        pruned = config_class(**values)
        pruned._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        return pruned

    def to_slim(self, model: nn.Module) -> nn.Module:
        """The same network as the family's pruned-model class, sharing (not copying) its weights.

        New ``Parameter`` objects wrap the original storage, so moving or replacing a converted
        module never touches the caller's model.
        """
        self.check_supported(model.config)
        config = self.pruned_config(model.config)
        _, model_class = pruned_classes(self.model_type)
        with torch.device("meta"):
            slim = model_class(config)
        state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if tied:
            state.pop("lm_head.weight", None)
        missing, unexpected = slim.load_state_dict(state, strict=False, assign=True)
        missing = [key for key in missing if not (tied and key == "lm_head.weight")]
        if missing or unexpected:
            raise UnsupportedModelError(
                f"{model.config.model_type}: weights do not match the {self.model_type} layout "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
            )
        if tied:
            slim.lm_head.weight = slim.model.embed_tokens.weight
        for prefix, module in offload.units_of(model):  # weights still on disk stay there
            offload.attach(slim.get_submodule(prefix[:-1]), offload.disk_weights(module).files, prefix)
        copy_buffers(model, slim)
        slim.eval()
        if hasattr(model, "generation_config"):
            slim.generation_config = model.generation_config
        return slim

    # -- accessors ---------------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        """The decoder stack under the language-model head (embeddings, layers, final norm)."""
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for the last decoder layer's output: final norm, head and (Gemma 2/3)
        the logit soft-cap, as the family's forward computes them."""
        logits = model.lm_head(model.model.norm(hidden))
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def around_layers(self, model: nn.Module) -> list[nn.Module]:
        """What the decoder runs before its layers (embeddings, rotary embeddings, ...), with parameters or buffers."""
        return [
            module
            for name, module in model.model.named_children()
            if name != "layers" and next(iter([*module.parameters(), *module.buffers()]), None) is not None
        ]

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn = layer.self_attn
        return AttentionParts(
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.head_dim, layer_query_to_kv(layer)
        )

    def mlp(self, layer: nn.Module) -> MlpParts:
        return MlpParts(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)

    def slice_head_parameters(self, layer: nn.Module, q_rows: list[int], kv_rows: list[int]) -> None:
        """Slice parameters other than q/k/v/o that have one slot per query or key/value row
        (none in most families; OLMo 2's q/k norms span the whole projection width)."""

    def set_attention(self, layer: nn.Module, *, query_to_kv: list[int] | None = None, **projections) -> None:
        """Install new q/k/v/o projections (any subset) and, with them, a new query->kv map."""
        shape = layer_shape_record(layer)
        for name, module in projections.items():
            if name not in ("q_proj", "k_proj", "v_proj", "o_proj"):
                raise KeyError(name)
            setattr(layer.self_attn, name, module)
        if query_to_kv is not None:
            shape["query_to_kv"] = list(query_to_kv)
        shape["o_proj_bias"] = layer.self_attn.o_proj.bias is not None
        configure_layer(layer, shape)

    def set_mlp(self, layer: nn.Module, **projections) -> None:
        shape = layer_shape_record(layer)
        for name, module in projections.items():
            if name not in ("gate_proj", "up_proj", "down_proj"):
                raise KeyError(name)
            setattr(layer.mlp, name, module)
        shape["intermediate_size"] = layer.mlp.down_proj.in_features
        shape["down_proj_bias"] = layer.mlp.down_proj.bias is not None
        configure_layer(layer, shape)

    def sync_config(self, model: nn.Module) -> None:
        """Write each layer's current shape into ``config.layer_shapes`` (what save relies on)."""
        model.config.layer_shapes = [layer_shape_record(layer) for layer in self.layers(model)]

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp_module(self, layer: nn.Module) -> nn.Module:
        return layer.mlp


def copy_buffers(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the buffers of ``source`` by name, the non-persistent ones included.

    Non-persistent buffers (RoPE frequencies, embedding scales) are not in the state dict, so a
    model built on the meta device and filled with ``load_state_dict`` would keep them on meta.
    """
    for name, buffer in source.named_buffers():
        owner_name, _, attr = name.rpartition(".")
        owner = target.get_submodule(owner_name) if owner_name else target
        owner._buffers[attr] = buffer
