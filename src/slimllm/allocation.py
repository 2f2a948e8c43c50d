"""Layer-wise pruning ratios (docs/method.md §6) and the solver that hits a parameter target.

Eq. 11: for the L_p layers with the highest input/output cosine c_l,
    r_l = r_0 · L_p · exp(α c_l) / Σ_{k∈S} exp(α c_k),
capped at ``max_layer_ratio``. The paper hand-picks r_0; we solve for it so that the parameter
count *after rounding* to whole heads and channels meets the target, then move single channels
to close the last gap (a channel is the finest unit, far smaller than a head).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from slimllm.config import ConfigError

# The paper's LLaMA-7B settings: (target, share of layers pruned, alpha).
_PAPER_SETTINGS = ((0.2, 26 / 32, 10.0), (0.5, 30 / 32, 7.0))


class AllocationError(ValueError):
    """The target cannot be reached under the given constraints."""


def _interpolate(ratio: float, index: int) -> float:
    (r_lo, *lo), (r_hi, *hi) = _PAPER_SETTINGS
    t = min(1.0, max(0.0, (ratio - r_lo) / (r_hi - r_lo)))
    return lo[index] + t * (hi[index] - lo[index])


def default_pruned_layers(ratio: float, num_layers: int) -> int:
    """L_p: the paper's share of layers (26/32 at 20%, 30/32 at 50%), interpolated and scaled."""
    return max(1, min(num_layers, round(_interpolate(ratio, 0) * num_layers)))


def default_alpha(ratio: float) -> float:
    """α: 10 at ≤20%, 7 at ≥50%, linear in between."""
    return _interpolate(ratio, 1)


# -- the allocations' options (``--method NAME@ALLOCATION``), each field's default written once --
PRUNED_PARTS = ("attention", "ffn")


def _max_layer_ratio():
    return field(default=0.9, metadata={"help": "cap on any layer's ratio"})


def _round_to():
    return field(default=1, metadata={"help": "keep FFN widths multiples of N"})


def _layers():
    return field(default=None, metadata={"help": "number of layers pruned, L_p; None: the paper's share", "type": int})


def _alpha():
    return field(
        default=None, metadata={"help": "Eq. 11 temperature; None: the paper's (10 at 20%%, 7 at 50%%)", "type": float}
    )


def _check_round_to(round_to: int) -> None:
    if round_to < 1:
        raise ConfigError(f"round_to must be at least 1, got {round_to}")


def _check_eq11(options) -> None:
    if options.layers is not None and options.layers < 1:
        raise ConfigError(f"layers (L_p) must be at least 1, got {options.layers}")


@dataclass(frozen=True)
class _CappedRatios:
    """What the allocations that set per-layer ratios share: the cap and the FFN width grid."""

    max_layer_ratio: float = _max_layer_ratio()
    round_to: int = _round_to()

    def __post_init__(self) -> None:
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1), got {self.max_layer_ratio}")
        _check_round_to(self.round_to)


@dataclass(frozen=True)
class UniformOptions(_CappedRatios):
    """``@uniform``: one ratio in every layer."""

    only: str | None = field(
        default=None,
        metadata={
            "help": "prune only the attention heads or only the FFN channels, the whole target taken from "
            "that part (with the Eq. 11 or uniform layer ratios); None: both",
            "choices": PRUNED_PARTS,
        },
    )
    tensor_parallel: int = field(
        default=1,
        metadata={
            "help": "keep every layer's heads, key/value heads and FFN width multiples of N, so vLLM's "
            "--tensor-parallel-size N splits each layer (needs --gqa group)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.only is not None and self.only not in PRUNED_PARTS:
            raise ConfigError(f"only must be one of {PRUNED_PARTS} or None, got {self.only!r}")
        if self.tensor_parallel < 1:
            raise ConfigError(f"tensor_parallel must be at least 1, got {self.tensor_parallel}")


@dataclass(frozen=True)
class Eq11Options(UniformOptions):
    """``@eq11`` (SlimLLM's): Eq. 11's ratios from the layers' cosines."""

    layers: int | None = _layers()
    alpha: float | None = _alpha()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eq11(self)


@dataclass(frozen=True)
class FlapAllocationOptions:
    """``@flap``: FLAP's adaptive structure (its threshold leaves no other knob)."""

    round_to: int = _round_to()

    def __post_init__(self) -> None:
        _check_round_to(self.round_to)


@dataclass(frozen=True)
class SearchOptions(_CappedRatios):
    """``@search``: Eq. 11's counts refined by a KL search (:mod:`slimllm.search`)."""

    layers: int | None = _layers()
    alpha: float | None = _alpha()
    search_minutes: float = field(
        default=5.0, metadata={"help": "time budget of the allocation search (NAME@search), in minutes"}
    )
    search_steps: int | None = field(
        default=None,
        metadata={"help": "stop the allocation search after N candidates (None: at the time budget)", "type": int},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eq11(self)
        if not self.search_minutes > 0:
            raise ConfigError(f"search_minutes must be positive, got {self.search_minutes}")
        if self.search_steps is not None and self.search_steps < 1:
            raise ConfigError(f"search_steps must be at least 1, got {self.search_steps}")


@dataclass(frozen=True)
class LayerCosts:
    """What pruning costs and saves in one layer, in parameters."""

    num_units: int  # prunable attention units (query heads, or key/value groups)
    unit_params: float  # parameters removed per unit (mean over units)
    width: int  # FFN channels
    channel_params: int  # parameters removed per channel
    attn_bias_added: int  # parameters the regression adds when the attention is pruned
    mlp_bias_added: int  # likewise for the FFN


@dataclass
class Allocation:
    selected: list[int]
    ratios: list[float]
    units_to_prune: list[int]
    channels_to_prune: list[int]
    r0: float
    pruned_layers: int
    alpha: float
    target_removed: int
    planned_removed: int
    search: dict | None = None  # the allocation search's report (slimllm.search), when it ran

    def to_dict(self) -> dict:
        return asdict(self)


def eq11_weights(cosines: list[float], selected: list[int], alpha: float) -> dict[int, float]:
    """L_p · softmax(α c) over the selected layers: multiply by r_0 to get r_l."""
    values = torch.tensor([cosines[i] for i in selected], dtype=torch.float64)
    weights = len(selected) * torch.softmax(alpha * values, dim=0)
    return dict(zip(selected, weights.tolist(), strict=True))


def rounded_channel_count(pruned: int, width: int, round_to: int) -> int:
    """Channels to prune instead of ``pruned`` so the kept width is the nearest multiple of
    ``round_to`` (at least one multiple kept; a width below ``round_to`` is left as it is)."""
    keep = width - pruned
    if round_to > 1 and width >= round_to:
        keep = max(round_to, round_to * round(keep / round_to))
    return min(width - 1, max(0, width - keep))


def _round_channels(ratio: float, width: int, round_to: int) -> int:
    return rounded_channel_count(round(ratio * width), width, round_to)


def _counts(
    ratio: float, costs: LayerCosts, round_to: int, only: str | None = None, unit_multiple: int = 1
) -> tuple[int, int]:
    units = min(costs.num_units - 1, max(0, round(ratio * costs.num_units))) if only != "ffn" else 0
    if unit_multiple > 1 and units:  # keep a multiple of unit_multiple units, at least one multiple
        keep = max(unit_multiple, unit_multiple * round((costs.num_units - units) / unit_multiple))
        units = costs.num_units - keep
    channels = _round_channels(ratio, costs.width, round_to) if only != "attention" else 0
    return units, channels


def check_tensor_parallel(costs: list[LayerCosts], size: int) -> None:
    """Every layer of the dense model must split over ``size`` devices before anything is pruned."""
    for index, cost in enumerate(costs):
        if cost.num_units % size or cost.width % size:
            raise AllocationError(
                f"--tensor-parallel {size}: layer {index} has {cost.num_units} key/value groups and FFN width "
                f"{cost.width}, not both multiples of {size}; this model cannot be split over {size} devices"
            )


def removed_params(costs: LayerCosts, units: int, channels: int, regression: bool) -> float:
    removed = units * costs.unit_params + channels * costs.channel_params
    if regression:
        removed -= costs.attn_bias_added if units else 0
        removed -= costs.mlp_bias_added if channels else 0
    return removed


def allocate(
    cosines: list[float],
    costs: list[LayerCosts],
    total_params: int,
    *,
    ratio: float,
    pruned_layers: int | None = None,
    alpha: float | None = None,
    max_layer_ratio: float = 0.9,
    uniform: bool = False,
    regression: bool = True,
    round_to: int = 1,
    only: str | None = None,
    unit_multiple: int = 1,
) -> Allocation:
    """Per-layer ratios and head/channel counts whose rounded total removes ``ratio`` of all
    parameters (to within one channel's parameters where rounding allows).

    ``only="attention"`` or ``"ffn"`` prunes that part alone: a layer's ratio is then the share
    of its heads or of its channels removed, and the whole target comes from that part (to within
    one head's parameters for the attention, whose units are coarse).

    ``unit_multiple`` > 1 (tensor parallelism): every layer keeps a multiple of that many units
    (key/value groups) and, with ``round_to`` a multiple of it, of FFN channels."""
    num_layers = len(costs)
    if unit_multiple > 1:
        check_tensor_parallel(costs, unit_multiple)
    if uniform:
        selected, alpha_used = list(range(num_layers)), 0.0
    else:
        count = pruned_layers if pruned_layers is not None else default_pruned_layers(ratio, num_layers)
        if not 1 <= count <= num_layers:
            raise AllocationError(f"layers (L_p) must lie in [1, {num_layers}], got {count}")
        alpha_used = default_alpha(ratio) if alpha is None else alpha
        selected = sorted(sorted(range(num_layers), key=lambda i: (-cosines[i], i))[:count])
    weights = eq11_weights(cosines, selected, alpha_used)
    target = ratio * total_params

    def plan(r0: float) -> tuple[dict[int, float], dict[int, tuple[int, int]], float]:
        ratios = {i: min(max_layer_ratio, r0 * weights[i]) for i in selected}
        counts = {i: _counts(ratios[i], costs[i], round_to, only, unit_multiple) for i in selected}
        removed = sum(removed_params(costs[i], *counts[i], regression) for i in selected)
        return ratios, counts, removed

    hi = max_layer_ratio / min(weights.values())
    if plan(hi)[2] < target:
        part = {"attention": "the attention of ", "ffn": "the FFN of "}.get(only, "")
        raise AllocationError(
            f"cannot remove {ratio:.1%} of the parameters by pruning {part}{len(selected)} layers at most "
            f"{max_layer_ratio:.0%} each (at most {plan(hi)[2] / total_params:.1%}); "
            "raise --layers or --max-layer-ratio, or lower --ratio"
            + (" (a layer keeps at least one head)" if only == "attention" else "")
        )
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if plan(mid)[2] >= target:
            hi = mid
        else:
            lo = mid
    r0 = min((lo, hi), key=lambda r: abs(plan(r)[2] - target))
    ratios, counts, removed = plan(r0)
    channels = {i: counts[i][1] for i in selected}
    if round_to == 1 and only != "attention":
        channels = close_gap(target - removed, channels, ratios, costs, max_layer_ratio)
    units = {i: counts[i][0] for i in selected}
    planned = sum(removed_params(costs[i], units[i], channels[i], regression) for i in selected)
    return Allocation(
        selected=selected,
        ratios=[ratios.get(i, 0.0) for i in range(num_layers)],
        units_to_prune=[units.get(i, 0) for i in range(num_layers)],
        channels_to_prune=[channels.get(i, 0) for i in range(num_layers)],
        r0=r0,
        pruned_layers=len(selected),
        alpha=alpha_used,
        target_removed=round(target),
        planned_removed=round(planned),
    )


def close_gap(
    gap: float, channels: dict[int, int], ratios: dict[int, float], costs: list[LayerCosts], cap: float
) -> dict[int, int]:
    """Prune (gap > 0) or restore (gap < 0) single channels, spread over the layers with the
    highest ratios first, until the gap is at most half a channel."""
    channels = dict(channels)
    order = sorted(channels, key=lambda i: (-ratios[i], i))
    while True:
        moved = False
        for i in order:
            per_channel = costs[i].channel_params
            if abs(gap) <= per_channel / 2:
                return channels
            step = 1 if gap > 0 else -1  # each move shrinks |gap|, so this cannot overshoot and loop
            new = channels[i] + step
            if 0 <= new <= math.floor(cap * costs[i].width) and new < costs[i].width:
                channels[i] = new
                gap -= step * per_channel
                moved = True
        if not moved:
            return channels


# -- the cost model ------------------------------------------------------------------------------
def attention_units(query_to_kv: list[int], gqa: str) -> list[list[int]]:
    """Prunable units: single query heads, or the query heads sharing each key/value head."""
    if gqa == "query":
        return [[h] for h in range(len(query_to_kv))]
    return [[h for h, kv in enumerate(query_to_kv) if kv == g] for g in range(max(query_to_kv) + 1)]


def layer_costs(model, adapter, gqa: str) -> list[LayerCosts]:
    """What removing one unit or channel of each layer saves, and the bias recovery adds: the
    parameter-cost model every allocator solves against."""
    costs = []
    for layer in adapter.layers(model):
        attn, mlp = adapter.attention(layer), adapter.mlp(layer)
        d, dh = attn.o_proj.out_features, attn.head_dim
        q_bias = dh if attn.q_proj.bias is not None else 0
        per_query_head = 2 * dh * d + q_bias
        units = attention_units(attn.query_to_kv, gqa)
        if gqa == "query":
            unit_params = float(per_query_head)
        else:
            kv_params = 2 * (dh * d + (dh if attn.k_proj.bias is not None else 0))
            unit_params = sum(len(u) for u in units) / len(units) * per_query_head + kv_params
        gate_bias = 2 if mlp.gate_proj.bias is not None else 0
        costs.append(
            LayerCosts(
                num_units=len(units),
                unit_params=unit_params,
                width=mlp.width,
                channel_params=3 * d + gate_bias,
                attn_bias_added=d if attn.o_proj.bias is None else 0,
                mlp_bias_added=d if mlp.down_proj.bias is None else 0,
            )
        )
    return costs


def eq11_allocator(options: UniformOptions | SearchOptions, *, uniform: bool, adds_bias: bool):
    """An ``allocator`` for a method: Eq. 11 (or one uniform ratio) solved for the target, counting
    the output biases only when the method's recovery adds them. ``options`` are the allocation's:
    ``only`` and ``tensor_parallel`` where it has them (a search's start has neither)."""
    only = getattr(options, "only", None)
    tensor_parallel = getattr(options, "tensor_parallel", 1)

    def allocator(cosines, costs, ratio_base, config) -> Allocation:
        return allocate(
            cosines,
            costs,
            ratio_base,
            ratio=config.ratio,
            # one ratio everywhere: which layers and how peaked are Eq. 11's alone
            pruned_layers=None if uniform else options.layers,
            alpha=None if uniform else options.alpha,
            max_layer_ratio=options.max_layer_ratio,
            uniform=uniform,
            regression=adds_bias,
            round_to=math.lcm(options.round_to, tensor_parallel),
            only=only,
            unit_multiple=tensor_parallel,
        )

    return allocator
