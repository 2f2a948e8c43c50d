"""Streaming statistics equal the same quantities on materialised activations."""

import numpy as np
import pytest
import torch

from slimllm.stats import Moments, NonFiniteActivationError, PairedColumnMoments, gram


def _batches(x: np.ndarray, sizes):
    start = 0
    for size in sizes:
        yield torch.from_numpy(x[start : start + size])
        start += size


def test_moments_match_numpy_in_uneven_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(301, 7)) @ rng.normal(size=(7, 7)) + 50.0  # large mean: the hard case
    full, diag = Moments(7), Moments(7, full=False)
    for batch in _batches(x, [1, 100, 57, 143]):
        full.update(batch.reshape(-1, 1, 7))  # any leading shape
        diag.update(batch)
    assert full.count == diag.count == 301
    np.testing.assert_allclose(full.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(full.covariance.numpy(), np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(diag.variance.numpy(), x.var(0), rtol=1e-9)
    np.testing.assert_allclose(full.square_sum.numpy(), (x**2).sum(0), rtol=1e-12)


@pytest.mark.parametrize("full", [True, False])
def test_leading_moments_are_those_of_the_first_features_alone(full):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)) + 3.0
    whole, first = Moments(6, full=full), Moments(4, full=full)
    for batch in _batches(x, [50, 70]):
        whole.update(batch)
        first.update(batch[:, :4])
    leading = whole.leading(4)
    assert leading.count == first.count and leading.full == full
    np.testing.assert_allclose(leading.mean.numpy(), first.mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(leading.covariance.numpy(), first.covariance.numpy(), rtol=1e-10, atol=1e-12)
    leading.update(torch.from_numpy(x[:5, :4]))  # a copy: the whole is not changed by it
    assert whole.count == 120


@pytest.mark.parametrize("dim", [5, 9, 16, 23])
def test_the_blockwise_gram_is_the_full_product(dim):
    rows = torch.from_numpy(np.random.default_rng(dim).normal(size=(40, dim)))
    np.testing.assert_allclose(gram(rows, block=4).numpy(), (rows.T @ rows).numpy(), rtol=1e-12, atol=1e-12)


def test_paired_moments_match_numpy():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(200, 5)) * 3 + 1
    approx = 0.5 * target + rng.normal(size=(200, 5))
    moments = PairedColumnMoments(5)
    for t, a in zip(_batches(target, [50, 80, 70]), _batches(approx, [50, 80, 70]), strict=True):
        moments.update(t, a)
    np.testing.assert_allclose(moments.mean_target.numpy(), target.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.var_approx.numpy(), approx.var(0), rtol=1e-10)
    expected_cov = ((approx - approx.mean(0)) * (target - target.mean(0))).mean(0)
    np.testing.assert_allclose(moments.cov_approx_target.numpy(), expected_cov, rtol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_are_a_clear_error(bad):
    moments = Moments(3, where="o_proj input of layer 4")
    with pytest.raises(NonFiniteActivationError, match="layer 4"):
        moments.update(torch.tensor([[1.0, 2.0, 0.0], [1.0, bad, 0.0]]))
    paired = PairedColumnMoments(2, where="FFN output of layer 4")
    with pytest.raises(NonFiniteActivationError, match="layer 4"):
        paired.update(torch.ones(3, 2), torch.tensor([[0.0, 1.0], [bad, -bad], [2.0, 3.0]]))


def test_large_finite_float32_activations_are_accepted():
    moments = Moments(2)
    moments.update(torch.full((4096, 2), torch.finfo(torch.float32).max))  # their float64 sum is finite
    assert moments.count == 4096
