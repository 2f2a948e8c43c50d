"""Structured OBS against least squares solved directly on materialised activations."""

import numpy as np
import pytest
import torch

from slimllm.importance import MlpStats
from slimllm.importance.obs import ObsChannels, greedy_group_removal, greedy_removal
from slimllm.stats import HeldOutMoments, Moments

N, IN, OUT = 400, 14, 9
NO_DAMPING = 1e-12


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, IN)) @ rng.normal(size=(IN, IN)) + rng.normal(size=IN)
    w = rng.normal(size=(OUT, IN)) * rng.uniform(0.1, 2.0, size=IN)
    return x, w


def _refit_error(x, w, kept):
    """min over B, c of the mean of ‖x Wᵀ − (x_K B + c)‖² (numpy.linalg.lstsq, with an intercept)."""
    target = x @ w.T
    design = np.hstack([x[:, kept], np.ones((N, 1))])
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(((design @ solution - target) ** 2).sum(1).mean())


def _covariance(x):
    moments = Moments(IN)
    moments.update(torch.from_numpy(x))
    return moments.covariance


def _direct_greedy(x, w, groups, steps):
    removed, order, costs, before = [], [], [], 0.0
    for _ in range(steps):
        errors = {}
        for g, features in enumerate(groups):
            if g not in order:
                kept = [i for i in range(IN) if i not in removed + list(features)]
                errors[g] = _refit_error(x, w, kept)
        g = min(errors, key=errors.get)
        order.append(g)
        removed += list(groups[g])
        costs.append(errors[g] - before)
        before = errors[g]
    return order, costs


def test_greedy_removal_matches_greedy_least_squares_refits():
    x, w = _data()
    order, costs = greedy_removal(_covariance(x), torch.from_numpy(w), 6, damping=NO_DAMPING)
    direct_order, direct_costs = _direct_greedy(x, w, [[i] for i in range(IN)], 6)
    assert order == direct_order
    np.testing.assert_allclose(costs, direct_costs, rtol=1e-6, atol=1e-9)


def test_the_summed_costs_are_the_refit_error_of_what_remains():
    x, w = _data(1)
    order, costs = greedy_removal(_covariance(x), torch.from_numpy(w), 9, damping=NO_DAMPING)
    kept = [i for i in range(IN) if i not in order]
    np.testing.assert_allclose(sum(costs), _refit_error(x, w, kept), rtol=1e-6)


def test_greedy_group_removal_matches_greedy_least_squares_refits():
    x, w = _data(2)
    groups = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13]]
    order, costs = greedy_group_removal(_covariance(x), torch.from_numpy(w), groups, 4, damping=NO_DAMPING)
    direct_order, direct_costs = _direct_greedy(x, w, groups, 4)
    assert order == direct_order
    np.testing.assert_allclose(costs, direct_costs, rtol=1e-6, atol=1e-9)


def test_single_feature_groups_give_the_single_feature_order():
    x, w = _data(3)
    cov, weight = _covariance(x), torch.from_numpy(w)
    assert greedy_group_removal(cov, weight, [[i] for i in range(IN)], 5)[0] == greedy_removal(cov, weight, 5)[0]


def test_damping_changes_the_costs():
    x, w = _data(4)
    cov, weight = _covariance(x), torch.from_numpy(w)
    assert greedy_removal(cov, weight, 3, damping=NO_DAMPING)[1] != greedy_removal(cov, weight, 3, damping=0.5)[1]


class _Parts:
    def __init__(self, weight):
        self.down_proj = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
        self.down_proj.weight.data = weight
        self.width = weight.shape[1]


def _mlp_stats(x, w):
    split = HeldOutMoments(IN, 4, "cpu", "test")
    for batch in np.array_split(x, 4):
        split.update(torch.from_numpy(batch))
    empty = Moments(1)
    return MlpStats(empty, empty, empty, _Parts(torch.from_numpy(w)), hidden_split=split)


@pytest.mark.parametrize("first, second", [(3, 8), (8, 3)])
def test_channel_selection_is_the_same_whichever_count_is_asked_first(first, second):
    x, w = _data(5)
    stats, criterion = _mlp_stats(x, w), ObsChannels()
    criterion.select(stats, first)
    fresh = ObsChannels().select(_mlp_stats(x, w), second)
    assert criterion.select(stats, second).kept == fresh.kept
    order = greedy_removal(_covariance(x), torch.from_numpy(w), second)[0]
    assert fresh.kept == [i for i in range(IN) if i not in order]


def test_channel_selection_needs_the_full_covariance():
    x, w = _data(6)
    stats = _mlp_stats(x, w)
    stats.hidden_split = None
    with pytest.raises(ValueError, match="full covariance"):
        ObsChannels().select(stats, 2)
