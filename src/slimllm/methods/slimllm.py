"""SlimLLM (Guo et al., ICML 2025): Pearson head importance with Algorithm 1's greedy swaps,
feature-space channel importance, the per-column regression, and Eq. 11's layer ratios
(docs/method.md §3-§6). The paper's ablations are switches of :class:`PruneConfig`."""

from __future__ import annotations

from slimllm.importance import FeatureSpaceChannels, PearsonGreedyHeads
from slimllm.methods.base import RECOVERY_OPTIONS, Criteria, MethodSpec, configured_recovery, register


def _slimllm(config) -> Criteria:
    return Criteria(
        PearsonGreedyHeads(greedy=config.greedy),
        FeatureSpaceChannels(feature_space=config.feature_space, keep_lowest=config.keep_lowest),
        configured_recovery(config),
    )


register(
    MethodSpec(
        "slimllm",
        "Pearson heads + greedy search, feature-space channels, regression",
        "eq11",
        _slimllm,
        options=("greedy", "feature_space", "keep_lowest", *RECOVERY_OPTIONS),
    )
)
