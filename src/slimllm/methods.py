"""A pruning method = a head criterion + a channel criterion + the recovery it was published with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slimllm.allocation import Allocation, allocate
from slimllm.config import PruneConfig
from slimllm.importance import AttentionStats, FeatureSpaceChannels, MlpStats, PearsonGreedyHeads, baselines
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
    allocation: str = "eq11"  # uniform | eq11 | flap: the layer ratios it uses


def build_method(config: PruneConfig) -> Method:
    """The criteria and recovery for ``config.method`` with the ablation switches applied.

    ``config.method`` is ``NAME`` or ``NAME@ALLOCATION``: NAME one of :func:`available_methods`,
    ALLOCATION one of ``uniform``, ``eq11`` (alias ``slimllm``: SlimLLM's Eq. 11 ratios) or
    ``flap`` (FLAP's adaptive structure). Without a suffix each method uses the ratios it was
    published with (:data:`DEFAULT_ALLOCATION`); ``config.uniform`` forces ``uniform``.
    """
    if config.method == "slimllm":
        return Method(
            name="slimllm",
            heads=PearsonGreedyHeads(greedy=config.greedy),
            channels=FeatureSpaceChannels(feature_space=config.feature_space, keep_lowest=config.keep_lowest),
            recovery=RegressionRecovery() if config.regression else NoRecovery(),
            uniform_ratios=config.uniform,
            allocation="uniform" if config.uniform else "eq11",
        )
    criterion, allocation = parse_method(config.method)
    allocation = "uniform" if config.uniform else (allocation or DEFAULT_ALLOCATION[criterion])
    prepares: list[Callable] = []
    if criterion == "slimllm":
        heads, channels = (
            PearsonGreedyHeads(greedy=config.greedy),
            FeatureSpaceChannels(feature_space=config.feature_space, keep_lowest=config.keep_lowest),
        )
        recovery = RegressionRecovery() if config.regression else NoRecovery()
        adds_bias = config.regression
    else:
        heads, channels, recovery, adds_bias = _baseline_criteria(criterion, config, prepares)
    if allocation == "flap":
        flap = baselines.FlapAllocation(gqa=config.gqa, adds_bias=adds_bias)
        prepares.append(flap.prepare)
        allocator = flap
    else:
        allocator = _allocate_with(uniform=allocation == "uniform", adds_bias=adds_bias)
    return Method(
        name=config.method,
        heads=heads,
        channels=channels,
        recovery=recovery,
        uniform_ratios=allocation == "uniform",
        prepare=_chain(prepares),
        allocator=allocator,
        allocation=allocation,
    )


BASELINES = ("magnitude", "wanda-sp", "flap", "taylor", "random")
ALLOCATIONS = ("uniform", "eq11", "flap")
_ALLOCATION_ALIASES = {"slimllm": "eq11", "slimllm-ratios": "eq11"}
# The layer ratios each method was published with.
DEFAULT_ALLOCATION = {
    "slimllm": "eq11",
    "magnitude": "uniform",
    "wanda-sp": "uniform",
    "taylor": "uniform",
    "random": "uniform",
    "flap": "flap",
}


def parse_method(name: str) -> tuple[str, str | None]:
    """``"wanda-sp@eq11"`` → ``("wanda-sp", "eq11")``; ``"flap"`` → ``("flap", None)``."""
    criterion, _, allocation = name.partition("@")
    if criterion not in DEFAULT_ALLOCATION:
        raise ValueError(
            f"unknown pruning method {name!r}; available: {', '.join(available_methods())} "
            f"(optionally NAME@ALLOCATION with ALLOCATION one of {', '.join(ALLOCATIONS)})"
        )
    if not allocation:
        return criterion, None
    allocation = _ALLOCATION_ALIASES.get(allocation, allocation)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r} in method {name!r}; use one of {', '.join(ALLOCATIONS)}")
    return criterion, allocation


def available_methods() -> list[str]:
    return ["slimllm", *BASELINES]


def _baseline_criteria(criterion: str, config: PruneConfig, prepares: list[Callable]):
    """(heads, channels, recovery, adds_bias) of a baseline, as published (no tuning)."""
    if criterion == "magnitude":
        return baselines.MagnitudeHeads(), baselines.MagnitudeChannels(), NoRecovery(), False
    if criterion == "wanda-sp":
        return baselines.WandaSpHeads(), baselines.WandaSpChannels(), NoRecovery(), False
    if criterion == "flap":
        return baselines.FlapHeads(), baselines.FlapChannels(), baselines.BiasCompensation(), True
    if criterion == "taylor":
        scores = baselines.TaylorScores(batch_size=config.batch_size)
        prepares.append(scores.prepare)
        return baselines.TaylorHeads(scores), baselines.TaylorChannels(scores), NoRecovery(), False
    if criterion == "random":
        scores = baselines.RandomScores(config.seed)
        return baselines.RandomHeads(scores), baselines.RandomChannels(scores), NoRecovery(), False
    raise ValueError(f"unknown baseline {criterion!r}")


def _allocate_with(*, uniform: bool, adds_bias: bool) -> Callable:
    """An ``allocator`` hook: Eq. 11 (or one uniform ratio) solved for the target, counting the
    output biases only when the method's recovery adds them."""

    def allocator(cosines, costs, dense_params, config: PruneConfig) -> Allocation:
        return allocate(
            cosines,
            costs,
            dense_params,
            ratio=config.ratio,
            pruned_layers=config.layers,
            alpha=config.alpha,
            max_layer_ratio=config.max_layer_ratio,
            uniform=uniform,
            regression=adds_bias,
            round_to=config.round_to,
        )

    return allocator


def _chain(prepares: list[Callable]) -> Callable | None:
    if not prepares:
        return None
    if len(prepares) == 1:
        return prepares[0]

    def prepare(*args):
        for hook in prepares:
            hook(*args)

    return prepare


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
