"""The regression against numpy.polyfit per column, from statistics and from streamed pairs; the
ridge refit against numpy.linalg.lstsq on materialised activations."""

import numpy as np
import pytest
import torch

from slimllm.plan import Recovery
from slimllm.recovery import (
    RIDGE_PENALTIES,
    Target,
    attention_regression,
    column_solution,
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
    solution, offset = ridge_solution(_moments(x), Target.own_output(w, b), torch.tensor(KEPT), penalty=0.0)
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
    solution, offset = ridge_solution(_moments(x), Target.own_output(w, b), torch.tensor(KEPT), penalty=penalty)
    np.testing.assert_allclose(solution.numpy(), expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset.numpy(), target.mean(0) - kept_x.mean(0) @ expected, rtol=1e-7, atol=1e-9)


def test_expected_error_is_the_mean_squared_error_on_the_data():
    rng = np.random.default_rng(4)
    x, linear = _layer_data(rng, 250), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    solution, offset = torch.from_numpy(rng.normal(size=(len(KEPT), OUT))), torch.from_numpy(rng.normal(size=OUT))
    direct = ((x[:, KEPT] @ solution.numpy() + offset.numpy() - (x @ w.numpy().T + b.numpy())) ** 2).sum(1).mean()
    got = expected_error(_moments(x), Target.own_output(w, b), torch.tensor(KEPT), solution, offset)
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
    solution, offset = ridge_solution(_moments(x), Target.own_output(w, b), torch.tensor(KEPT), penalty)
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


# -- ridge towards the dense model's hidden state (--recovery ridge-dense) ----------------------------
def _joint(x, t) -> Moments:
    return _moments(np.hstack([x, t]))


def test_column_solution_matches_polyfit_per_column_with_a_bias():
    """The per-column fit of the kept-input output (bias included) to its own dense output, as
    a full solution: columns scaled and shifted as numpy.polyfit finds."""
    rng = np.random.default_rng(7)
    x, linear = _layer_data(rng, 300), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    dense = x @ w.numpy().T + b.numpy()
    pruned = x[:, KEPT] @ w.numpy()[:, KEPT].T + b.numpy()
    scale, shift = _polyfit_columns(dense, pruned)
    solution, offset = column_solution(_moments(x), w, b, torch.tensor(KEPT), Target.own_output(w, b))
    np.testing.assert_allclose(solution.numpy(), w.numpy()[:, KEPT].T * scale, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset.numpy(), scale * b.numpy() + shift, rtol=1e-7, atol=1e-9)


def test_ridge_towards_a_trailing_target_is_least_squares():
    """z = [x, t]: the fit of t from x_K equals numpy.linalg.lstsq on the materialised rows."""
    rng = np.random.default_rng(8)
    x = _layer_data(rng, 400)
    t = x @ rng.normal(size=(IN, OUT)) + np.sin(x[:, :OUT]) + 0.3 * rng.normal(size=(400, OUT)) + 1.5
    design = np.hstack([x[:, KEPT], np.ones((len(x), 1))])
    expected, *_ = np.linalg.lstsq(design, t, rcond=None)
    like = torch.zeros(1, dtype=torch.float64)
    target = Target.trailing(IN, OUT, like)
    solution, offset = ridge_solution(_joint(x, t), target, torch.tensor(KEPT), penalty=0.0)
    np.testing.assert_allclose(solution.numpy(), expected[:-1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset.numpy(), expected[-1], rtol=1e-7, atol=1e-9)
    direct = ((x[:, KEPT] @ solution.numpy() + offset.numpy() - t) ** 2).sum(1).mean()
    assert expected_error(_joint(x, t), target, torch.tensor(KEPT), solution, offset) == pytest.approx(direct, rel=1e-9)
    # a target of own_output with extra rows ignores the trailing features
    linear = _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    own, joint_own = Target.own_output(w, b), Target.own_output(w, b, extra_rows=OUT)
    got = ridge_solution(_joint(x, t), joint_own, torch.tensor(KEPT), penalty=0.01)
    want = ridge_solution(_moments(x), own, torch.tensor(KEPT), penalty=0.01)
    torch.testing.assert_close(got, want)


def test_ridge_refit_towards_the_dense_state_scores_every_fit_against_it():
    rng = np.random.default_rng(9)
    x, linear = _layer_data(rng, 320), _linear(rng)
    w, b = linear.weight.detach(), linear.bias.detach()
    # the dense model's state differs from this layer's own output by a drift the kept inputs partly explain
    t = x @ w.numpy().T + b.numpy() + 0.5 * x[:, KEPT[:OUT]] + 0.1 * rng.normal(size=(320, OUT))
    split = HeldOutMoments(IN + OUT, batches=4, device="cpu", where="test")
    for chunk in np.split(np.hstack([x, t]), 4):
        split.update(torch.from_numpy(chunk))
    recovery, chosen = ridge_refit(split, linear, KEPT, target_dims=OUT)
    errors = chosen["held_out_error"]
    assert len(errors) == 2 * (len(RIDGE_PENALTIES) + 1)
    assert chosen["chosen"] == min(errors, key=errors.get)
    assert chosen["chosen"].startswith("dense-")  # the drift is learnable: aiming at t wins
    held = np.split(np.hstack([x, t]), 4)[3]
    xs = torch.from_numpy(held[:, :IN][:, KEPT])
    held_error = ((recovery.weight @ xs.T).T + recovery.bias - torch.from_numpy(held[:, IN:])).pow(2).sum(1).mean()
    # the best fit to the layer's own output does worse on the dense state
    own_solution = ridge_solution(_moments(x), Target.own_output(w, b), torch.tensor(KEPT), 1e-6)
    own_error = ((xs @ own_solution[0] + own_solution[1]) - torch.from_numpy(held[:, IN:])).pow(2).sum(1).mean()
    assert held_error < own_error
