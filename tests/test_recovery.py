"""The regression against numpy.polyfit per column, from statistics and from streamed pairs; the
ridge refit against numpy.linalg.lstsq on materialised activations."""

import numpy as np
import pytest
import torch

from slimllm.plan import Recovery
from slimllm.recovery import (
    RIDGE_PENALTIES,
    attention_regression,
    expected_error,
    paired_regression,
    ridge_refit,
    ridge_solution,
)
from slimllm.stats import HeldOutMoments, Moments, PairedColumnMoments
from slimllm.surgery import fold_into_linear

H, DH, D, N = 5, 4, 9, 300


def _polyfit_columns(target, approx):
    fits = [np.polyfit(approx[:, c], target[:, c], 1) for c in range(target.shape[1])]
    return np.array([f[0] for f in fits]), np.array([f[1] for f in fits])


def test_attention_regression_matches_polyfit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, H * DH)) @ rng.normal(size=(H * DH, H * DH)) + 2.0
    o_weight = rng.normal(size=(D, H * DH))
    kept = [0, 2, 3]
    rows = [h * DH + i for h in kept for i in range(DH)]
    dense = x @ o_weight.T
    pruned = x[:, rows] @ o_weight[:, rows].T
    moments = Moments(H * DH)
    moments.update(torch.from_numpy(x))
    recovery = attention_regression(moments, torch.from_numpy(o_weight), kept, DH)
    scale, bias = _polyfit_columns(dense, pruned)
    np.testing.assert_allclose(recovery.scale.numpy(), scale, rtol=1e-6)
    np.testing.assert_allclose(recovery.bias.numpy(), bias, rtol=1e-6, atol=1e-9)


def test_paired_regression_matches_polyfit():
    rng = np.random.default_rng(1)
    approx = rng.normal(size=(N, D)) * rng.uniform(0.5, 3, size=D) + rng.normal(size=D)
    target = approx * rng.uniform(0.5, 1.5, size=D) + rng.normal(size=(N, D)) + 1.0
    moments = PairedColumnMoments(D)
    for start in range(0, N, 64):
        moments.update(torch.from_numpy(target[start : start + 64]), torch.from_numpy(approx[start : start + 64]))
    recovery = paired_regression(moments)
    scale, bias = _polyfit_columns(target, approx)
    np.testing.assert_allclose(recovery.scale.numpy(), scale, rtol=1e-6)
    np.testing.assert_allclose(recovery.bias.numpy(), bias, rtol=1e-6, atol=1e-9)


def test_fold_into_linear_applies_scale_and_bias():
    torch.manual_seed(0)
    for has_bias in (False, True):
        linear = torch.nn.Linear(6, 4, bias=has_bias).double()
        recovery = Recovery(torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4))
        folded = fold_into_linear(linear, recovery)
        x = torch.randn(3, 6, dtype=torch.float64)
        torch.testing.assert_close(folded(x), linear(x) * recovery.scale + recovery.bias.double())


# -- ridge refit (--recovery ridge) -----------------------------------------------------------------
IN, OUT, KEPT = 12, 7, [0, 1, 3, 4, 6, 8, 9, 11]


def _layer_data(rng, n):
    mixing = rng.normal(size=(IN, IN))
    return rng.normal(size=(n, IN)) @ mixing + rng.normal(size=IN)


def _linear(rng) -> torch.nn.Linear:
    linear = torch.nn.Linear(IN, OUT).double()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(rng.normal(size=(OUT, IN))))
        linear.bias.copy_(torch.from_numpy(rng.normal(size=OUT)))
    return linear


def _moments(x) -> Moments:
    moments = Moments(x.shape[1])
    moments.update(torch.from_numpy(x))
    return moments


def test_ridge_solution_without_penalty_is_least_squares():
    rng = np.random.default_rng(2)
    x, linear = _layer_data(rng, 400), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    target = x @ w.numpy().T + b.numpy()
    design = np.hstack([x[:, KEPT], np.ones((len(x), 1))])
    expected, *_ = np.linalg.lstsq(design, target, rcond=None)
    solution, offset = ridge_solution(_moments(x), w, b, torch.tensor(KEPT), penalty=0.0)
    np.testing.assert_allclose(solution.numpy(), expected[:-1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset.numpy(), expected[-1], rtol=1e-7, atol=1e-9)


def test_ridge_solution_with_penalty_matches_augmented_least_squares():
    """min (1/N)‖X_K B + c − T‖² + λ‖B‖² is the least squares of the centred X_K stacked on √(Nλ)·I."""
    rng = np.random.default_rng(3)
    x, linear = _layer_data(rng, 300), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    target = x @ w.numpy().T + b.numpy()
    penalty = 0.05
    kept_x = x[:, KEPT]
    lam = penalty * kept_x.var(0).mean()
    centred_x, centred_t = kept_x - kept_x.mean(0), target - target.mean(0)
    stacked_x = np.vstack([centred_x, np.sqrt(len(x) * lam) * np.eye(len(KEPT))])
    stacked_t = np.vstack([centred_t, np.zeros((len(KEPT), OUT))])
    expected, *_ = np.linalg.lstsq(stacked_x, stacked_t, rcond=None)
    solution, offset = ridge_solution(_moments(x), w, b, torch.tensor(KEPT), penalty=penalty)
    np.testing.assert_allclose(solution.numpy(), expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset.numpy(), target.mean(0) - kept_x.mean(0) @ expected, rtol=1e-7, atol=1e-9)


def test_expected_error_is_the_mean_squared_error_on_the_data():
    rng = np.random.default_rng(4)
    x, linear = _layer_data(rng, 250), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    solution, offset = torch.from_numpy(rng.normal(size=(len(KEPT), OUT))), torch.from_numpy(rng.normal(size=OUT))
    direct = ((x[:, KEPT] @ solution.numpy() + offset.numpy() - (x @ w.numpy().T + b.numpy())) ** 2).sum(1).mean()
    got = expected_error(_moments(x), w, b, torch.tensor(KEPT), solution, offset)
    assert got == pytest.approx(direct, rel=1e-9)


def test_ridge_refit_picks_the_candidate_with_the_least_held_out_error_and_refits_on_all():
    rng = np.random.default_rng(5)
    x, linear = _layer_data(rng, 320), _linear(rng)
    split = HeldOutMoments(IN, batches=4, device="cpu", where="test")
    for chunk in np.split(x, 4):
        split.update(torch.from_numpy(chunk))
    assert split.fit.count == 240 and split.held.count == 80
    recovery, chosen = ridge_refit(split, linear, KEPT)
    errors = chosen["held_out_error"]
    assert "column-regression" in errors and len(errors) == len(RIDGE_PENALTIES) + 1
    assert chosen["chosen"] == min(errors, key=errors.get)
    # the refit uses every batch: with these exact linear targets the best ridge is least squares on all 320 rows
    w, b = linear.weight.detach(), linear.bias.detach()
    penalty = float(chosen["chosen"].split(":")[1])
    solution, offset = ridge_solution(_moments(x), w, b, torch.tensor(KEPT), penalty)
    torch.testing.assert_close(recovery.weight, solution.T)
    torch.testing.assert_close(recovery.bias, offset)
    folded = fold_into_linear(torch.nn.Linear(len(KEPT), OUT).double(), recovery)
    xs = torch.from_numpy(x)
    torch.testing.assert_close(folded(xs[:, KEPT]), xs[:, KEPT] @ solution + offset)


def test_merged_moments_equal_one_stream():
    rng = np.random.default_rng(6)
    x = _layer_data(rng, 200)
    split = HeldOutMoments(IN, batches=5, device="cpu", where="test")
    for chunk in np.split(x, 5):
        split.update(torch.from_numpy(chunk))
    whole = _moments(x)
    torch.testing.assert_close(split.total.covariance, whole.covariance)
    torch.testing.assert_close(split.total.mean, whole.mean)
