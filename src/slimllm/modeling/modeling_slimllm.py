"""A LLaMA-family decoder whose layers may each have their own width.

Structured pruning leaves every decoder layer with its own number of query heads, its own
key/value heads (with an arbitrary map from each query head to its key/value head), its own FFN
width and, after the regression recovery, a bias on ``o_proj``/``down_proj``. Stock
``LlamaForCausalLM`` assumes one shape for all layers, so this class reads the per-layer shapes
from ``config.layer_shapes``.

This file is self-contained on purpose: ``slimllm.save`` copies it next to the weights and points
``config.json``'s ``auto_map`` at it, so ``trust_remote_code=True`` loads a pruned model on a
machine without slimllm. It may import only ``torch`` and ``transformers``.

Per-layer shape record (one dict per layer, ``None`` for an unpruned layer)::

    {"query_to_kv": [0, 0, 1, 2], "intermediate_size": 1200,
     "o_proj_bias": true, "down_proj_bias": true}

``query_to_kv[i]`` is the index, among the layer's kept key/value heads, of query head ``i``'s
key/value head. Families covered: LLaMA 1/2/3 (``attention_bias``, ``mlp_bias``, RoPE scaling),
Mistral (``sliding_window``), Qwen2 (``qkv_bias``, per-layer ``layer_types``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

MODEL_TYPE = "slimllm_llama"


@strict
class SlimLlamaConfig(LlamaConfig):
    model_type = MODEL_TYPE

    layer_shapes: list | None = None
    qkv_bias: bool | None = None
    sliding_window: int | None = None
    layer_types: list | None = None

    def __post_init__(self, **kwargs):
        if self.qkv_bias is None:
            self.qkv_bias = bool(self.attention_bias)
        if self.layer_types is None:
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        if self.layer_shapes is None:
            self.layer_shapes = [None] * self.num_hidden_layers
        super().__post_init__(**kwargs)

    def layer_shape(self, layer_idx: int) -> dict:
        """The shape record of one layer, with the dense defaults filled in."""
        head_dim = self.head_dim
        groups = self.num_attention_heads // self.num_key_value_heads
        dense = {
            "query_to_kv": [i // groups for i in range(self.num_attention_heads)],
            "intermediate_size": self.intermediate_size,
            "o_proj_bias": bool(self.attention_bias),
            "down_proj_bias": bool(self.mlp_bias),
        }
        shape = self.layer_shapes[layer_idx]
        merged = {**dense, **(shape or {})}
        merged["head_dim"] = head_dim
        return merged


def _is_regular_grouping(query_to_kv: list[int]) -> int | None:
    """The group size if query head i uses key/value head i // g for every i, else None."""
    num_kv = max(query_to_kv) + 1
    if len(query_to_kv) % num_kv:
        return None
    groups = len(query_to_kv) // num_kv
    if query_to_kv == [i // groups for i in range(len(query_to_kv))]:
        return groups
    return None


class SlimLlamaAttention(nn.Module):
    def __init__(self, config: SlimLlamaConfig, layer_idx: int):
        super().__init__()
        shape = config.layer_shape(layer_idx)
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.set_head_map(shape["query_to_kv"])
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None

        hidden, qkv_bias = config.hidden_size, config.qkv_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=shape["o_proj_bias"])

    def set_head_map(self, query_to_kv: list[int]) -> None:
        """Declare which key/value head each query head reads (called again after pruning)."""
        self.query_to_kv = [int(kv) for kv in query_to_kv]
        self.num_heads = len(self.query_to_kv)
        self.num_key_value_heads = max(self.query_to_kv) + 1
        if sorted(set(self.query_to_kv)) != list(range(self.num_key_value_heads)):
            raise ValueError(f"layer {self.layer_idx}: query_to_kv {self.query_to_kv} leaves a key/value head unused")
        regular = _is_regular_grouping(self.query_to_kv)
        # Uneven maps expand k/v to one head per query head; even ones use the stock grouping.
        self.num_key_value_groups = regular if regular is not None else 1
        self._expand_kv = regular is None
        self._kv_index: dict[torch.device, torch.Tensor] = {}

    def _expand(self, states: torch.Tensor) -> torch.Tensor:
        index = self._kv_index.get(states.device)
        if index is None:
            index = torch.tensor(self.query_to_kv, dtype=torch.long, device=states.device)
            self._kv_index[states.device] = index
        return states.index_select(1, index)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if past_key_values is not None:
            # The cache holds the layer's own key/value heads, never the expanded copies.
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        if self._expand_kv:
            key_states, value_states = self._expand(key_states), self._expand(value_states)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class SlimLlamaMLP(LlamaMLP):
    def __init__(self, config: SlimLlamaConfig, layer_idx: int):
        nn.Module.__init__(self)
        shape = config.layer_shape(layer_idx)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = shape["intermediate_size"]
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=shape["down_proj_bias"])
        self.act_fn = ACT2FN[config.hidden_act]


class SlimLlamaDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: SlimLlamaConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = SlimLlamaAttention(config, layer_idx)
        self.mlp = SlimLlamaMLP(config, layer_idx)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def shape_record(self) -> dict:
        """This layer's entry for ``config.layer_shapes``, read off its modules."""
        return {
            "query_to_kv": list(self.self_attn.query_to_kv),
            "intermediate_size": self.mlp.down_proj.in_features,
            "o_proj_bias": self.self_attn.o_proj.bias is not None,
            "down_proj_bias": self.mlp.down_proj.bias is not None,
        }

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class SlimLlamaPreTrainedModel(PreTrainedModel):
    config_class = SlimLlamaConfig
    config: SlimLlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SlimLlamaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": SlimLlamaDecoderLayer,
        "attentions": SlimLlamaAttention,
    }


class SlimLlamaModel(SlimLlamaPreTrainedModel):
    def __init__(self, config: SlimLlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [SlimLlamaDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache
        kwargs.pop("return_dict", None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        if not isinstance(causal_mask_mapping := attention_mask, dict):
            mask_kwargs = {
                "config": self.config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "past_key_values": past_key_values,
                "position_ids": position_ids,
            }
            causal_mask_mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in self.config.layer_types:
                causal_mask_mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        for i, decoder_layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask_mapping[self.config.layer_types[i]],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
        )


class SlimLlamaForCausalLM(SlimLlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SlimLlamaConfig):
        super().__init__(config)
        self.model = SlimLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        return_dict = kwargs.pop("return_dict", None) is not False  # peft passes None: means the default, a dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
        return result if return_dict else result.to_tuple()


__all__ = ["SlimLlamaConfig", "SlimLlamaForCausalLM", "SlimLlamaModel", "SlimLlamaPreTrainedModel"]
