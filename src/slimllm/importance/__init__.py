"""Importance criteria: small interchangeable objects that choose what to keep.

A head criterion sees :class:`AttentionStats` (statistics of the ``o_proj`` input plus the
layer's projections) and returns the kept units; a channel criterion sees :class:`MlpStats`
and returns the kept channels. ``slimllm prune --method NAME`` only swaps these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slimllm.importance.channels import channel_importance, select_channels
from slimllm.importance.heads import PearsonSimilarity, greedy_search, group_units, head_contribution_covariance
from slimllm.models.base import AttentionParts, MlpParts
from slimllm.stats import HeldOutMoments, Moments


@dataclass
class AttentionStats:
    o_input: Moments  # mean and covariance of the o_proj input (all heads side by side)
    parts: AttentionParts
    units: list[list[int]]  # the query heads of each prunable unit
    o_input_split: HeldOutMoments | None = None  # the same, fitting and held-out batches apart
    # > 0: o_input_split holds [x, t], t (this many features) the dense model's state after the
    # attention less the pruned model's layer input (``--recovery ridge-dense``)
    target_dims: int = 0


@dataclass
class MlpStats:
    inputs: Moments  # FFN input (post-norm), per-feature variance
    hidden: Moments  # intermediate activation H, per-channel variance
    output: Moments  # FFN output Y, full covariance
    parts: MlpParts
    hidden_split: HeldOutMoments | None = None  # H's full covariance, fitting and held-out batches apart
    # > 0: hidden_split holds [H, t], t the dense model's layer output less the pruned model's state
    # after its attention (``--recovery ridge-dense``)
    target_dims: int = 0
    # what criteria derive from these statistics alone, kept for the next count (the search asks for many)
    memo: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Selection:
    kept: list[int]
    scores: list[float] = field(default_factory=list)


class PearsonGreedyHeads:
    """SlimLLM heads: Pearson similarity of the output without each unit, then Algorithm 1."""

    name = "pearson-greedy"

    def __init__(self, greedy: bool = True):
        self.greedy = greedy

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        contrib = head_contribution_covariance(
            stats.o_input.covariance, stats.parts.o_proj.weight, stats.parts.head_dim
        )
        similarity = PearsonSimilarity(group_units(contrib, stats.units))
        kept, scores = greedy_search(similarity, num_prune, greedy=self.greedy)
        return Selection(kept, scores)


class FeatureSpaceChannels:
    """SlimLLM channels: feature-space weighted down-projection norm plus gate/up terms."""

    name = "feature-space"

    def __init__(self, feature_space: bool = True, keep_lowest: float = 0.01):
        self.feature_space = feature_space
        self.keep_lowest = keep_lowest

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        key = (self.name, self.feature_space)
        importance = stats.memo.get(key)
        if importance is None:
            importance = stats.memo[key] = channel_importance(
                gate_weight=stats.parts.gate_proj.weight,
                up_weight=stats.parts.up_proj.weight,
                down_weight=stats.parts.down_proj.weight,
                output_covariance=stats.output.covariance if self.feature_space else None,
                hidden_square_sum=stats.hidden.square_sum,
                input_square_sum=stats.inputs.square_sum,
                feature_space=self.feature_space,
            )
        return Selection(select_channels(importance, num_prune, self.keep_lowest), importance.tolist())


def lowest_scores_pruned(scores: torch.Tensor, num_prune: int) -> list[int]:
    """Kept indices when the ``num_prune`` lowest scores go (ties broken by index)."""
    order = torch.argsort(scores.detach().cpu().to(torch.float64), stable=True).tolist()
    pruned = set(order[:num_prune])
    return [i for i in range(scores.numel()) if i not in pruned]


__all__ = [
    "AttentionStats",
    "FeatureSpaceChannels",
    "MlpStats",
    "PearsonGreedyHeads",
    "Selection",
    "lowest_scores_pruned",
]
