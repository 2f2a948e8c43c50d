"""What a pruning method is, and the registry ``--method``, ``slimllm bench`` and the help read.

A method is a head criterion, a channel criterion and a recovery (:class:`Criteria`), plus the
layer ratios it was published with. Criteria ``select(stats, num_prune) -> Selection`` on the
streaming statistics of one layer; a recovery returns the per-column scale and bias folded into
the pruned output projection and says whether it adds a bias (the parameter target counts it)
and whether it needs the second, paired pass over the FFN output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from slimllm.config import ConfigError, PruneConfig
from slimllm.importance import AttentionStats, MlpStats, Selection
from slimllm.plan import Recovery
from slimllm.recovery import attention_regression, paired_regression, ridge_refit
from slimllm.registry import Registry
from slimllm.stats import PairedColumnMoments
from slimllm.surgery import head_rows


class HeadCriterion(Protocol):
    name: str

    def select(self, stats: AttentionStats, num_prune: int) -> Selection: ...


class ChannelCriterion(Protocol):
    name: str

    def select(self, stats: MlpStats, num_prune: int) -> Selection: ...


class RecoveryMethod(Protocol):
    name: str
    adds_bias: bool  # folds a new bias into the pruned output projections (the target counts it)
    needs_output_pass: bool  # needs the paired dense/pruned FFN output moments
    held_out_moments: bool  # needs full input moments with held-out batches apart (stats.*_split)
    dense_targets: bool  # aims at dense hidden states (the walk runs the dense layers alongside)
    dense_inputs: bool  # with dense_targets: the dense layers run on the dense model's inputs, not the pruned ones

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery | None: ...

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery | None: ...


class NoRecovery:
    name = "none"
    adds_bias = False
    needs_output_pass = False
    held_out_moments = False
    dense_targets = False  # aims at the dense model's hidden states: the walk runs the dense model alongside
    dense_inputs = False

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery | None:
        return None

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery | None:
        return None


class RegressionRecovery(NoRecovery):
    """SlimLLM's per-column least squares, folded into o_proj/down_proj as scale plus bias."""

    name = "regression"
    summary = "the paper's per-column fit"
    adds_bias = True
    needs_output_pass = True

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery:
        return attention_regression(stats.o_input, stats.parts.o_proj.weight, kept_heads, stats.parts.head_dim)

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery:
        if paired is None:
            raise ValueError("the regression needs the paired output pass")
        return paired_regression(paired)


class RidgeRecovery(NoRecovery):
    """Beyond the paper: refit the pruned o_proj/down_proj by ridge regression onto the dense
    outputs, the penalty (or the paper's per-column regression) chosen on held-out calibration
    batches (:func:`slimllm.recovery.ridge_refit`)."""

    name = "ridge"
    summary = (
        "beyond the paper: o_proj/down_proj refitted by ridge regression onto their own dense outputs, "
        "the penalty chosen on held-out calibration windows"
    )
    adds_bias = True
    held_out_moments = True

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery:
        rows = head_rows(kept_heads, stats.parts.head_dim)
        return ridge_refit(stats.o_input_split, stats.parts.o_proj, rows, stats.target_dims)[0]

    def mlp(self, stats: MlpStats, kept: list[int], paired: PairedColumnMoments | None) -> Recovery:
        return ridge_refit(stats.hidden_split, stats.parts.down_proj, kept, stats.target_dims)[0]


class DenseRidgeRecovery(RidgeRecovery):
    """Beyond the paper: the ridge refit aims at the dense *model*'s hidden state rather than the
    layer's own dense output on the pruned model's inputs, so each refit also corrects what the
    layers before it lost. The fits towards the layer's own output compete on the same held-out
    error. Families with norms after o_proj/down_proj (Gemma, OLMo 2) fall back to ``ridge``."""

    name = "ridge-dense"
    summary = "the same, aiming at the dense model's hidden states"
    dense_targets = True
    dense_inputs = True  # the dense model runs alongside on its own inputs


class LayerRidgeRecovery(DenseRidgeRecovery):
    """Beyond the paper: the ``down_proj`` refit aims at the dense *layer*'s output on the pruned
    model's inputs, so the FFN also makes up for what the same layer's attention lost; errors of
    earlier layers are not chased (``ridge-dense`` chases them)."""

    name = "ridge-layer"
    summary = "down_proj aiming at the dense layer's output on the pruned inputs"
    dense_inputs = False


# ``--recovery NAME``: the recoveries a method that reads the option can use, in listing order.
RECOVERIES: Registry[type[NoRecovery]] = Registry("recovery")
for _recovery in (RegressionRecovery, RidgeRecovery, DenseRidgeRecovery, LayerRidgeRecovery):
    RECOVERIES.add(_recovery)


@dataclass(frozen=True)
class NoOptions:
    """The options of a plug-in that has none of its own."""


@dataclass(frozen=True)
class RecoveryOptions:
    """The options of a method whose recovery is chosen by name (``--recovery``)."""

    recovery: str = field(
        default="regression",
        metadata={"help": "how the pruned output projections are refitted (see below)", "choices": tuple(RECOVERIES)},
    )
    regression: bool = field(default=True, metadata={"help": "ablation: no output regression"})

    def __post_init__(self) -> None:
        if self.recovery not in RECOVERIES:
            raise ConfigError(f"unknown recovery {self.recovery!r}; use one of {', '.join(RECOVERIES)}")


def configured_recovery(options: RecoveryOptions) -> RecoveryMethod:
    """The recovery ``--recovery`` names, or none with the ``--no-regression`` ablation."""
    return RECOVERIES[options.recovery]() if options.regression else NoRecovery()


# prepare(model, adapter, layer0_batches, windows, device): sees the whole dense model first
Prepare = Callable[..., None]
# allocator(cosines, costs, ratio_base, config) -> Allocation: the per-layer head/channel counts
Allocator = Callable[..., object]


@dataclass(frozen=True)
class Criteria:
    heads: HeadCriterion
    channels: ChannelCriterion
    recovery: RecoveryMethod
    prepare: Prepare | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, a one-line summary, the layer ratios it was published with
    (``eq11``, ``uniform`` or ``flap``) and how to build its criteria from a :class:`PruneConfig`
    and its own options. ``beyond_paper`` methods are options measured against SlimLLM (``slimllm
    bench --options``), not rows of the default benchmark. ``options`` is the dataclass of what its
    criteria and recovery read beyond :class:`PruneConfig`'s fields (their defaults written there,
    once); ``build`` gets an instance filled from ``PruneConfig.options``."""

    name: str
    summary: str
    default_allocation: str
    build: Callable[[PruneConfig, object], Criteria]
    beyond_paper: bool = False
    options: type = NoOptions
    # needs every weight in memory at once (a backward pass over the whole model), so it cannot
    # prune a model whose layers are read from disk one at a time
    whole_model: bool = False


@dataclass
class Method:
    """What ``--method`` selects, ready to run: criteria, recovery, allocator and preparation."""

    name: str
    heads: HeadCriterion
    channels: ChannelCriterion
    recovery: RecoveryMethod
    allocation: str
    allocator: Allocator
    prepare: Prepare | None = None
    refine: Callable | None = None  # the allocation's refinement on the whole model (AllocationSpec.refine)
    whole_model: bool = False
    options: object = NoOptions()  # the method's own options, resolved (its options dataclass)
    allocation_options: object = NoOptions()  # the allocation's, likewise

    def options_dict(self) -> dict:
        """Every plug-in option of this run, given or defaulted (what the plan records)."""
        return {**asdict(self.options), **asdict(self.allocation_options)}

    @property
    def adds_bias(self) -> bool:
        return self.recovery.adds_bias


REGISTRY: Registry[MethodSpec] = Registry("method")
register = REGISTRY.add
