"""Feature-space channel importance against a direct computation on materialised X, H, Y."""

import numpy as np
import pytest
import torch

from slimllm.importance.channels import channel_importance, select_channels
from slimllm.stats import Moments

D, DFF, N = 12, 30, 500


def _ffn(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) @ rng.normal(size=(D, D)) + rng.normal(size=D)
    w_gate, w_up = rng.normal(size=(DFF, D)), rng.normal(size=(DFF, D))
    w_down = rng.normal(size=(D, DFF)) * rng.uniform(0.1, 2, size=DFF)
    gate = x @ w_gate.T
    h = gate / (1 + np.exp(-gate)) * (x @ w_up.T)
    y = h @ w_down.T
    return x, h, y, w_gate, w_up, w_down


def _direct_importance(x, h, y, w_gate, w_up, w_down, feature_space=True):
    y_hat = y - y.mean(0)
    m, q = np.linalg.eigh(y_hat.T @ y_hat)
    m = np.abs(m)
    c = 1 / (1 + np.exp(-m / m.mean())) if feature_space else np.ones_like(m)
    w_rot = w_down.T @ q if feature_space else w_down.T
    i_down = np.linalg.norm(w_rot * c, axis=1)
    x_l2 = np.linalg.norm(x, axis=0)
    h_l2 = np.linalg.norm(h, axis=0)
    return h_l2 * i_down + np.linalg.norm(x_l2 * w_gate, axis=1) + np.linalg.norm(x_l2 * w_up, axis=1)


@pytest.mark.parametrize("feature_space", [True, False])
def test_channel_importance_matches_direct(feature_space):
    x, h, y, w_gate, w_up, w_down = _ffn()
    inputs, hidden, output = Moments(D, full=False), Moments(DFF, full=False), Moments(D)
    for start in range(0, N, 128):  # streamed in batches
        inputs.update(torch.from_numpy(x[start : start + 128]))
        hidden.update(torch.from_numpy(h[start : start + 128]))
        output.update(torch.from_numpy(y[start : start + 128]))
    got = channel_importance(
        gate_weight=torch.from_numpy(w_gate),
        up_weight=torch.from_numpy(w_up),
        down_weight=torch.from_numpy(w_down),
        output_covariance=output.covariance,
        hidden_square_sum=hidden.square_sum,
        input_square_sum=inputs.square_sum,
        feature_space=feature_space,
    )
    np.testing.assert_allclose(got.numpy(), _direct_importance(x, h, y, w_gate, w_up, w_down, feature_space), rtol=1e-6)


def test_feature_space_weighting_changes_the_scores():
    x, h, y, w_gate, w_up, w_down = _ffn(3)
    with_fs = _direct_importance(x, h, y, w_gate, w_up, w_down, True)
    without = _direct_importance(x, h, y, w_gate, w_up, w_down, False)
    assert not np.allclose(with_fs / with_fs.sum(), without / without.sum(), rtol=1e-3)


def test_select_channels_spares_the_lowest_fraction():
    importance = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 1.0, 2.0, 6.0, 0.3, 7.0])
    # ascending order: 1(0.1) 3(0.2) 8(0.3) 5(1.0) 6(2.0) 2(3.0) ...
    assert select_channels(importance, 3, keep_lowest=0.0) == [0, 2, 4, 5, 6, 7, 9]
    # keep_lowest 0.1 of 10 spares one channel (index 1) and prunes the next three
    assert select_channels(importance, 3, keep_lowest=0.1) == [0, 1, 2, 4, 6, 7, 9]
    assert select_channels(importance, 0, keep_lowest=0.1) == list(range(10))
