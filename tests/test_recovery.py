"""The regression against numpy.polyfit per column, from statistics and from streamed pairs."""

import numpy as np
import torch

from slimllm.plan import Recovery
from slimllm.recovery import attention_regression, paired_regression
from slimllm.stats import Moments, PairedColumnMoments
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
