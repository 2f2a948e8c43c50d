"""Output recovery after pruning a sub-layer (docs/method.md §5) and FLAP's bias compensation.

SlimLLM's regression fits, for every output column c separately, O_c ≈ A_c · Ô_c + B_c by
ordinary least squares with an intercept, O being the dense sub-layer output and Ô the output
of the kept heads/channels on the same inputs. It folds into the pruned output projection as a
row scale and a new bias (:func:`slimllm.surgery.fold_into_linear`). All statistics are float64.
"""

from __future__ import annotations

import torch

from slimllm.plan import Recovery
from slimllm.stats import Moments, PairedColumnMoments


def affine_fit(
    mean_target: torch.Tensor, mean_approx: torch.Tensor, var_approx: torch.Tensor, cov_approx_target: torch.Tensor
) -> Recovery:
    """A_c = Cov(Ô_c, O_c) / Var(Ô_c), B_c = mean(O_c) − A_c · mean(Ô_c).

    A column whose pruned output is constant has no slope to fit: A_c = 1 and B_c takes up the
    mean difference."""
    safe = var_approx > 1e-12 * var_approx.abs().max().clamp(min=1e-300)
    scale = torch.where(safe, cov_approx_target / torch.where(safe, var_approx, 1.0), torch.ones_like(var_approx))
    bias = mean_target - scale * mean_approx
    return Recovery(scale=scale, bias=bias)


def attention_regression(o_input: Moments, o_weight: torch.Tensor, kept_heads: list[int], head_dim: int) -> Recovery:
    """The regression for ``o_proj`` from the mean and covariance of its input X.

    With V = ``o_proj.weight``ᵀ: O = X V, Ô = X_K V_K, so per column
    Cov(Ô_c, O_c) = V_K[:, c]ᵀ Σ_{K·} V[:, c] and Var(Ô_c) = V_K[:, c]ᵀ Σ_KK V_K[:, c].
    An existing ``o_proj`` bias shifts both outputs equally and cancels out of A and B."""
    v = o_weight.detach().to(torch.float64).T.to(o_input.mean.device)
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept_heads]).to(v.device)
    sigma, mu = o_input.covariance, o_input.mean
    v_kept = v[rows]
    cov = (v_kept * (sigma[rows] @ v)).sum(0)
    var = (v_kept * (sigma[rows][:, rows] @ v_kept)).sum(0)
    return affine_fit(mu @ v, mu[rows] @ v_kept, var, cov)


def paired_regression(moments: PairedColumnMoments) -> Recovery:
    """The regression from streamed per-column moments of dense and pruned outputs."""
    return affine_fit(moments.mean_target, moments.mean_approx, moments.var_approx, moments.cov_approx_target)


def bias_compensation(input_mean: torch.Tensor, weight: torch.Tensor, removed_inputs: list[int]) -> Recovery:
    """FLAP's compensation: the removed inputs' mean contribution W[:, removed] · E[x_removed]
    becomes a bias (scale 1)."""
    w = weight.detach().to(torch.float64)
    idx = torch.tensor(removed_inputs, dtype=torch.long, device=w.device)
    bias = w[:, idx] @ input_mean.to(w.device, torch.float64)[idx] if removed_inputs else w.new_zeros(w.shape[0])
    return Recovery(scale=torch.ones(w.shape[0], dtype=torch.float64, device=w.device), bias=bias)
