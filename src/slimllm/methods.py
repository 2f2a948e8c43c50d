"""A pruning method = a head criterion + a channel criterion + the recovery it was published with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slimllm.config import PruneConfig
from slimllm.importance import AttentionStats, FeatureSpaceChannels, MlpStats, PearsonGreedyHeads
from slimllm.plan import Recovery
from slimllm.recovery import attention_regression, paired_regression
from slimllm.stats import PairedColumnMoments


class NoRecovery:
    name = "none"
    needs_output_pass = False

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery | None:
        return None

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery | None:
        return None


class RegressionRecovery(NoRecovery):
    """SlimLLM's per-column least squares, folded into o_proj/down_proj as scale plus bias."""

    name = "regression"
    needs_output_pass = True

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery:
        return attention_regression(stats.o_input, stats.parts.o_proj.weight, kept_heads, stats.parts.head_dim)

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery:
        if paired is None:
            raise ValueError("the regression needs the paired output pass")
        return paired_regression(paired)


@dataclass
class Method:
    """What ``--method`` selects. Optional hooks let a method see the whole dense model first:

    - ``prepare(model, adapter, layer0_batches, windows, device)`` runs before any layer is
      pruned (e.g. a backward pass for Taylor scores);
    - ``allocator(cosines, costs, dense_params, config)`` replaces Eq. 11's allocation (e.g.
      FLAP's adaptive structure); it returns an :class:`~slimllm.allocation.Allocation`.
    """

    name: str
    heads: object
    channels: object
    recovery: NoRecovery
    uniform_ratios: bool = False
    prepare: Callable | None = None
    allocator: Callable | None = None


def build_method(config: PruneConfig) -> Method:
    """The criteria and recovery for ``config.method`` with the ablation switches applied."""
    if config.method == "slimllm":
        return Method(
            name="slimllm",
            heads=PearsonGreedyHeads(greedy=config.greedy),
            channels=FeatureSpaceChannels(feature_space=config.feature_space, keep_lowest=config.keep_lowest),
            recovery=RegressionRecovery() if config.regression else NoRecovery(),
            uniform_ratios=config.uniform,
        )
    raise ValueError(f"unknown pruning method {config.method!r}; available: {', '.join(available_methods())}")


def available_methods() -> list[str]:
    return ["slimllm"]


def paired_output_hook(parts_down: nn.Linear, kept: list[int], moments: PairedColumnMoments):
    """A pre-hook for ``down_proj`` that streams dense and kept-channel outputs into ``moments``."""
    weight, bias = parts_down.weight, parts_down.bias
    index = torch.tensor(kept, dtype=torch.long, device=weight.device)
    kept_weight = weight.index_select(1, index)

    def hook(_module, args):
        hidden = args[0]
        dense = torch.nn.functional.linear(hidden, weight, bias)
        approx = torch.nn.functional.linear(hidden.index_select(-1, index), kept_weight, bias)
        moments.update(dense, approx)

    return hook
