"""SlimLLM (Guo et al., ICML 2025): Pearson head importance with Algorithm 1's greedy swaps,
feature-space channel importance, the per-column regression, and Eq. 11's layer ratios
(docs/method.md §3-§6). The paper's ablations are switches of :class:`SlimllmOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field

from slimllm.config import ConfigError
from slimllm.importance import FeatureSpaceChannels, PearsonGreedyHeads
from slimllm.methods.base import Criteria, MethodSpec, RecoveryOptions, configured_recovery, register


@dataclass(frozen=True)
class SlimllmOptions(RecoveryOptions):
    greedy: bool = field(default=True, metadata={"help": "ablation: no greedy head search (Algorithm 1)"})
    feature_space: bool = field(default=True, metadata={"help": "ablation: channel norms in the original basis"})
    keep_lowest: float = field(default=0.01, metadata={"help": "spare the lowest FRACTION of channels (code quirk)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.keep_lowest < 0.5:
            raise ConfigError(f"keep_lowest must lie in [0, 0.5), got {self.keep_lowest}")


def _slimllm(config, options: SlimllmOptions) -> Criteria:
    return Criteria(
        PearsonGreedyHeads(greedy=options.greedy),
        FeatureSpaceChannels(feature_space=options.feature_space, keep_lowest=options.keep_lowest),
        configured_recovery(options),
    )


register(
    MethodSpec(
        "slimllm",
        "Pearson heads + greedy search, feature-space channels, regression",
        "eq11",
        _slimllm,
        options=SlimllmOptions,
    )
)
