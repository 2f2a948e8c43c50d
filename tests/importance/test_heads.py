"""Statistics-form Pearson scores and Algorithm 1 against a direct computation on
materialised per-head outputs (the authors' code's way)."""

import itertools

import numpy as np
import pytest
import torch

from slimllm.importance.heads import PearsonSimilarity, greedy_search, group_units, head_contribution_covariance
from slimllm.stats import Moments

H, DH, D, N = 6, 4, 10, 400


def _activations(seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(H * DH, H * DH)) * rng.uniform(0.2, 2.0, size=H * DH)
    x = rng.normal(size=(N, H * DH)) @ mixing + rng.normal(size=H * DH)
    o_weight = rng.normal(size=(D, H * DH))  # PyTorch layout: (out, in)
    return x, o_weight


def _pearson_sum(a: np.ndarray, b: np.ndarray) -> float:
    """Σ_c |ρ(A[:,c], B[:,c])| with population statistics, computed directly."""
    a, b = a - a.mean(0), b - b.mean(0)
    num = (a * b).mean(0)
    den = np.sqrt((a * a).mean(0) * (b * b).mean(0))
    return float(np.abs(np.where(den > 0, num / np.where(den > 0, den, 1), 0)).sum())


def _head_outputs(x, o_weight, units):
    v = o_weight.T
    per_head = [x[:, h * DH : (h + 1) * DH] @ v[h * DH : (h + 1) * DH] for h in range(H)]
    return [sum(per_head[h] for h in unit) for unit in units]


def _similarity(x, o_weight, units):
    moments = Moments(H * DH)
    moments.update(torch.from_numpy(x))
    contrib = head_contribution_covariance(moments.covariance, torch.from_numpy(o_weight), DH)
    return PearsonSimilarity(group_units(contrib, units))


def _direct_greedy(outputs, num_prune):
    full = sum(outputs)
    scores = [_pearson_sum(full, full - o) for o in outputs]
    order = sorted(range(len(outputs)), key=lambda i: (-scores[i], i))
    pruned, kept = order[:num_prune], order[num_prune:]
    best = _pearson_sum(full, sum(outputs[k] for k in kept))
    for candidate in pruned:
        values = []
        for position in range(len(kept)):
            trial = [*kept[:position], candidate, *kept[position + 1 :]]
            values.append(_pearson_sum(full, sum(outputs[k] for k in trial)))
        position = int(np.argmax(values))
        if values[position] > best:
            kept[position], best = candidate, values[position]
    return sorted(kept), scores


@pytest.mark.parametrize("units", [[[h] for h in range(H)], [[0, 1], [2, 3], [4, 5]]], ids=["query", "group"])
def test_leave_one_out_scores_match_direct(units):
    x, w = _activations()
    outputs = _head_outputs(x, w, units)
    full = sum(outputs)
    direct = [_pearson_sum(full, full - o) for o in outputs]
    stats_form = _similarity(x, w, units).leave_one_out().numpy()
    np.testing.assert_allclose(stats_form, direct, rtol=1e-6)
    assert _pearson_sum(full, full) == pytest.approx(D)


def test_mask_and_swap_values_match_direct():
    x, w = _activations(1)
    units = [[h] for h in range(H)]
    outputs = _head_outputs(x, w, units)
    full = sum(outputs)
    similarity = _similarity(x, w, units)
    kept = [0, 2, 3]
    mask = torch.zeros(H, dtype=torch.float64)
    mask[kept] = 1
    assert similarity.of_mask(mask) == pytest.approx(_pearson_sum(full, sum(outputs[k] for k in kept)), rel=1e-6)
    swaps = similarity.swaps(mask, incoming=5, outgoing=kept).numpy()
    for position, out in enumerate(kept):
        trial = [k for k in kept if k != out] + [5]
        assert swaps[position] == pytest.approx(_pearson_sum(full, sum(outputs[k] for k in trial)), rel=1e-6)


@pytest.mark.parametrize("seed,num_prune", list(itertools.product(range(4), [1, 2, 3, 4])))
def test_greedy_search_matches_direct(seed, num_prune):
    x, w = _activations(seed)
    units = [[h] for h in range(H)]
    kept, scores = greedy_search(_similarity(x, w, units), num_prune)
    direct_kept, direct_scores = _direct_greedy(_head_outputs(x, w, units), num_prune)
    assert kept == direct_kept
    np.testing.assert_allclose(scores, direct_scores, rtol=1e-6)


def test_greedy_search_can_change_the_score_order_choice():
    """Guard against a greedy that never swaps: on some inputs it must differ from plain ranking."""
    differs = 0
    for seed in range(12):
        x, w = _activations(seed)
        similarity = _similarity(x, w, [[h] for h in range(H)])
        with_greedy, _ = greedy_search(similarity, 3)
        without, _ = greedy_search(similarity, 3, greedy=False)
        differs += with_greedy != without
    assert differs > 0
