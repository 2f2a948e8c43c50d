"""Eq. 11 ratios and the parameter-target solver."""

import math

import pytest

from slimllm.allocation import (
    AllocationError,
    LayerCosts,
    allocate,
    default_alpha,
    default_pruned_layers,
    eq11_weights,
    removed_params,
)

# SmolLM2-135M: 30 layers, d=576, 9 query heads of 64, 3 kv heads, SwiGLU 1536, 134,515,008 params.
D, DH, LAYERS, TOTAL = 576, 64, 30, 134_515_008
SMOL_QUERY = LayerCosts(
    num_units=9, unit_params=2 * DH * D, width=1536, channel_params=3 * D, attn_bias_added=D, mlp_bias_added=D
)
SMOL_GROUP = LayerCosts(
    num_units=3, unit_params=3 * 2 * DH * D + 2 * DH * D, width=1536, channel_params=3 * D,
    attn_bias_added=D, mlp_bias_added=D,
)  # fmt: skip


def _cosines(n=LAYERS):
    return [0.80 + 0.19 * math.sin(1.7 * i) ** 2 for i in range(n)]


def test_paper_defaults():
    assert default_pruned_layers(0.2, 32) == 26 and default_pruned_layers(0.5, 32) == 30
    assert default_alpha(0.2) == 10 and default_alpha(0.5) == 7 and default_alpha(0.35) == pytest.approx(8.5)
    assert default_alpha(0.1) == 10 and default_alpha(0.7) == 7


def test_eq11_weights_average_to_one_and_follow_the_formula():
    cos = _cosines()
    selected = [0, 3, 4, 9, 20]
    weights = eq11_weights(cos, selected, alpha=7.0)
    assert sum(weights.values()) / len(selected) == pytest.approx(1.0)
    denom = sum(math.exp(7.0 * cos[k]) for k in selected)
    for i in selected:
        assert weights[i] == pytest.approx(len(selected) * math.exp(7.0 * cos[i]) / denom)


@pytest.mark.parametrize("costs", [SMOL_QUERY, SMOL_GROUP], ids=["query", "group"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_solver_hits_target_on_smollm2_shapes(ratio, costs):
    cos = _cosines()
    result = allocate(cos, [costs] * LAYERS, TOTAL, ratio=ratio, max_layer_ratio=0.9)
    removed = sum(
        removed_params(costs, u, c, True) for u, c in zip(result.units_to_prune, result.channels_to_prune, strict=True)
    )
    assert removed == result.planned_removed
    assert abs(removed - ratio * TOTAL) <= costs.channel_params  # well within one head (73,728)
    assert len(result.selected) == default_pruned_layers(ratio, LAYERS)
    # the selected layers are those with the highest cosine
    threshold = sorted(cos, reverse=True)[len(result.selected) - 1]
    assert all(cos[i] >= threshold for i in result.selected)
    assert max(result.ratios) <= 0.9
    for i in range(LAYERS):
        if i not in result.selected:
            assert result.units_to_prune[i] == result.channels_to_prune[i] == 0


def test_cap_moves_the_excess_to_other_layers():
    cos = [0.0] * 9 + [1.0]  # one layer far more redundant than the rest
    costs = [SMOL_QUERY] * 10
    result = allocate(cos, costs, 10 * 3_500_000, ratio=0.4, pruned_layers=10, alpha=10.0, max_layer_ratio=0.6)
    assert result.ratios[9] == pytest.approx(0.6)
    assert all(0 < r < 0.6 for r in result.ratios[:9])


def test_uniform_gives_one_ratio():
    result = allocate(_cosines(), [SMOL_QUERY] * LAYERS, TOTAL, ratio=0.3, uniform=True)
    assert len(set(round(r, 12) for r in result.ratios)) == 1
    assert result.selected == list(range(LAYERS))


@pytest.mark.parametrize("only", ["attention", "ffn"])
def test_one_part_alone_carries_the_whole_target(only):
    cos = _cosines()
    result = allocate(cos, [SMOL_QUERY] * LAYERS, TOTAL, ratio=0.1, only=only)
    untouched = result.channels_to_prune if only == "attention" else result.units_to_prune
    assert set(untouched) == {0}
    removed = sum(
        removed_params(SMOL_QUERY, u, c, True)
        for u, c in zip(result.units_to_prune, result.channels_to_prune, strict=True)
    )
    assert removed == result.planned_removed
    # counted by hand: heads or channels times their cost, less one output bias per pruned layer
    per_unit = SMOL_QUERY.unit_params if only == "attention" else SMOL_QUERY.channel_params
    counts = result.units_to_prune if only == "attention" else result.channels_to_prune
    assert removed == sum(n * per_unit - (D if n else 0) for n in counts)
    # to within one head (coarse) or one channel of the target
    assert abs(removed - 0.1 * TOTAL) <= per_unit
    # the selection and its ratios' ordering still follow Eq. 11
    assert len(result.selected) == default_pruned_layers(0.1, LAYERS)


def test_attention_alone_cannot_remove_more_than_all_but_one_head_per_layer():
    # 30 layers × 8 prunable heads × 73,728 = 17.7M of 134.5M: 20% is out of reach
    with pytest.raises(AllocationError, match=r"the attention of .* keeps at least one head"):
        allocate(_cosines(), [SMOL_QUERY] * LAYERS, TOTAL, ratio=0.2, only="attention", pruned_layers=LAYERS)


def test_unreachable_target_is_a_clear_error():
    with pytest.raises(AllocationError, match="cannot remove"):
        allocate(_cosines(), [SMOL_QUERY] * LAYERS, TOTAL, ratio=0.7, pruned_layers=5)


def test_closing_the_gap_converges_when_it_is_exactly_half_a_channel():
    """Regression: a gap of exactly half a channel used to push every layer to the cap."""
    from slimllm.allocation import close_gap

    costs = [SMOL_QUERY] * 3
    channels = {0: 400, 1: 500, 2: 600}
    ratios = {0: 0.3, 1: 0.4, 2: 0.5}
    half = SMOL_QUERY.channel_params / 2
    assert close_gap(half, channels, ratios, costs, 0.9) == channels
    assert close_gap(half + 1, channels, ratios, costs, 0.9) == {0: 400, 1: 500, 2: 601}
    assert close_gap(-2.6 * SMOL_QUERY.channel_params, channels, ratios, costs, 0.9) == {0: 399, 1: 499, 2: 599}


def test_solver_on_real_smollm2_cosines_hits_target():
    """The layer cosines measured on SmolLM2-135M (dense, LAMBADA calibration) at 0.5."""
    cos = [0.0094, 0.8168, 0.9571, 0.9665, 0.9648, 0.9652, 0.9647, 0.9632, 0.9542, 0.9606, 0.9522, 0.9544,
           0.9692, 0.9733, 0.974, 0.9715, 0.9691, 0.9755, 0.9629, 0.9589, 0.9455, 0.9541, 0.9543, 0.952, 0.8505,
           0.9753, 0.9707, 0.9564, 0.9498, 0.7586]  # fmt: skip
    for ratio in (0.2, 0.3, 0.4, 0.5):
        result = allocate(cos, [SMOL_QUERY] * LAYERS, TOTAL, ratio=ratio)
        assert abs(result.planned_removed - ratio * TOTAL) <= SMOL_QUERY.channel_params
