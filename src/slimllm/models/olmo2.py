"""OLMo 2: q/k RMS norms over the whole projection width, so they lose the rows of pruned heads."""

from __future__ import annotations

import torch
from torch import nn

from slimllm.models.base import ModelAdapter


def _sliced_norm(norm: nn.Module, rows: list[int]) -> nn.Module:
    weight = norm.weight.detach()
    new = type(norm)(len(rows), eps=norm.variance_epsilon)
    new.weight = nn.Parameter(
        weight.index_select(0, torch.tensor(rows, device=weight.device)).clone(), requires_grad=False
    )
    return new


class Olmo2Adapter(ModelAdapter):
    model_type = "olmo2"
    heads_independent = False  # the q/k norms span every head
    residual_outputs = False  # post-norms after the attention and the FFN
    export_refusal = (
        "its norms after the attention and the FFN (none before) and q/k norms over whole projections have no "
        "place in llama.cpp's deci layer nor in a stock LLaMA one"
    )

    def slice_head_parameters(self, layer: nn.Module, q_rows: list[int], kv_rows: list[int]) -> None:
        attn = layer.self_attn
        attn.q_norm = _sliced_norm(attn.q_norm, q_rows)
        attn.k_norm = _sliced_norm(attn.k_norm, kv_rows)
