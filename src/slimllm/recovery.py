"""Output recovery after pruning a sub-layer (docs/method.md §5) and FLAP's bias compensation.

SlimLLM's regression fits, for every output column c separately, O_c ≈ A_c · Ô_c + B_c by
ordinary least squares with an intercept, O being the dense sub-layer output and Ô the output
of the kept heads/channels on the same inputs. It folds into the pruned output projection as a
row scale and a new bias (:func:`slimllm.surgery.fold_into_linear`). All statistics are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimllm.plan import Recovery
from slimllm.stats import HeldOutMoments, Moments, PairedColumnMoments


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


def column_regression(inputs: Moments, weight: torch.Tensor, kept: torch.Tensor) -> Recovery:
    """The per-column regression of a linear layer's dense output on its kept-input output, from
    the mean and covariance of its input X.

    With V = ``weight``ᵀ: O = X V, Ô = X_K V_K, so per column
    Cov(Ô_c, O_c) = V_K[:, c]ᵀ Σ_{K·} V[:, c] and Var(Ô_c) = V_K[:, c]ᵀ Σ_KK V_K[:, c].
    An existing bias shifts both outputs equally and cancels out of A and B."""
    v = weight.detach().to(torch.float64).T.to(inputs.mean.device)
    rows = kept.to(v.device)
    v_kept = v[rows]
    cov, var = _column_moments(inputs, rows, v_kept, v)
    return affine_fit(inputs.mean @ v, inputs.mean[rows] @ v_kept, var, cov)


def _column_moments(inputs: Moments, kept: torch.Tensor, v_kept: torch.Tensor, target_map: torch.Tensor):
    """Per output column c, Cov(Ô_c, T_c) and Var(Ô_c) for Ô = z_K V_K and T = z M, from Σ of z."""
    sigma = inputs.covariance
    cov = (v_kept * (sigma[kept] @ target_map)).sum(0)
    var = (v_kept * (sigma[kept][:, kept] @ v_kept)).sum(0)
    return cov, var


def attention_regression(o_input: Moments, o_weight: torch.Tensor, kept_heads: list[int], head_dim: int) -> Recovery:
    """The regression for ``o_proj`` (:func:`column_regression` on the kept heads' columns)."""
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept_heads])
    return column_regression(o_input, o_weight, rows)


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


# -- least squares beyond the paper (options ``--recovery ridge`` and ``ridge-dense``) ----------
RIDGE_PENALTIES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)  # times the mean variance of the kept inputs


@dataclass(frozen=True)
class Target:
    """What a refit aims at, as a linear function of the rows z the moments describe:
    the target of a token is ``z @ map + offset``. For its own dense output (``--recovery ridge``)
    z is the projection's input x and the map is Wᵀ; for the dense model's hidden state
    (``ridge-dense``) z = [x, t] and the map picks t."""

    map: torch.Tensor  # (dim z, outputs), float64
    offset: torch.Tensor  # (outputs,), float64

    @classmethod
    def own_output(cls, weight: torch.Tensor, bias: torch.Tensor, extra_rows: int = 0) -> Target:
        """x Wᵀ + b, z holding x first and ``extra_rows`` other features after it."""
        return cls(torch.cat([weight.T, weight.new_zeros(extra_rows, weight.shape[0])]), bias)

    @classmethod
    def trailing(cls, input_dim: int, outputs: int, like: torch.Tensor) -> Target:
        """t, the last ``outputs`` features of z = [x, t]."""
        eye = torch.eye(outputs, dtype=torch.float64, device=like.device)
        return cls(torch.cat([like.new_zeros(input_dim, outputs), eye]), like.new_zeros(outputs))


def ridge_solution(inputs: Moments, target: Target, kept: torch.Tensor, penalty: float):
    """The ridge fit of ``target`` from the kept inputs z_K only:
    argmin_{B, c} E‖z_K B + c − (z M + m)‖² + λ‖B‖², λ = ``penalty`` · mean Var(z_K), i.e.
    B = (Σ_KK + λI)⁻¹ Σ_K· M and c = μ M + m − μ_K B. Returns (B, c), float64."""
    sigma, mu = inputs.covariance, inputs.mean
    s_k = sigma[kept]
    s_kk = s_k[:, kept]
    ridge = penalty * s_kk.diagonal().mean().clamp(min=1e-30)
    eye = torch.eye(len(kept), dtype=s_kk.dtype, device=s_kk.device)
    mapped = _nonzero_rows(target.map)  # Σ_K· M over the rows of M that are not zero (t alone, for t)
    solution = torch.linalg.solve(s_kk + ridge * eye, s_k[:, mapped] @ target.map[mapped])
    offset = mu @ target.map + target.offset - mu[kept] @ solution
    return solution, offset


def expected_error(inputs: Moments, target: Target, kept: torch.Tensor, solution, offset) -> float:
    """E‖z_K B + c − (z M + m)‖² over the rows the moments describe:
    tr(Dᵀ Σ D) + ‖μ D + c − m‖² with D = E_K B − M (E_K puts B's rows back at K)."""
    d = -target.map.clone()
    d[kept] += solution
    rows = _nonzero_rows(d)  # the rows of D that are zero add nothing: a smaller Σ serves
    d, sigma, mu = d[rows], inputs.covariance[rows][:, rows], inputs.mean[rows]
    return float((d * (sigma @ d)).sum() + ((mu @ d + offset - target.offset) ** 2).sum())


def _nonzero_rows(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix != 0).any(dim=1).nonzero().squeeze(1)


def column_solution(inputs: Moments, weight: torch.Tensor, bias: torch.Tensor, kept: torch.Tensor, target: Target):
    """The paper's per-column fit, towards ``target``, as a full solution (B, c): column c of
    the kept-input output Ô = z_K W_Kᵀ + b is scaled and shifted to fit column c of the target."""
    v_kept = weight[:, kept].T
    mu = inputs.mean
    cov, var = _column_moments(inputs, kept, v_kept, target.map)
    fit = affine_fit(mu @ target.map + target.offset, mu[kept] @ v_kept + bias, var, cov)
    return v_kept * fit.scale, fit.bias + fit.scale * bias


def ridge_refit(
    split: HeldOutMoments, linear: torch.nn.Linear, kept: list[int], target_dims: int = 0
) -> tuple[Recovery, dict]:
    """Refit ``linear`` (dense, before pruning) on its ``kept`` inputs by ridge regression.

    With ``target_dims == 0`` the moments are those of the input x and the target is the
    layer's own dense output x Wᵀ + b. With ``target_dims > 0`` they are those of z = [x, t],
    t being the dense model's hidden state less the pruned model's residual (``ridge-dense``);
    the target is t, and the fits towards x Wᵀ + b compete too.

    Candidates: the ridge solution for each of :data:`RIDGE_PENALTIES` and the paper's
    per-column regression, each fitted on the fitting batches and scored by its expected squared
    error to the target on the held-out batches; the best is fitted again on all batches.
    Returns the recovery (a full weight and a bias) and what was chosen."""
    device = split.fit.mean.device
    weight = linear.weight.detach().to(device, torch.float64)
    bias = weight.new_zeros(weight.shape[0])
    if linear.bias is not None:
        bias = linear.bias.detach().to(device, torch.float64)
    index = torch.tensor(kept, dtype=torch.long, device=device)
    own = Target.own_output(weight, bias, target_dims)
    goal = Target.trailing(weight.shape[1], target_dims, weight) if target_dims else own
    aims = {"": own} if not target_dims else {"": own, "dense-": goal}

    candidates = {}
    for prefix, aim in aims.items():
        for p in RIDGE_PENALTIES:
            candidates[f"{prefix}ridge:{p:g}"] = lambda m, p=p, aim=aim: ridge_solution(m, aim, index, p)
        candidates[f"{prefix}column-regression"] = lambda m, aim=aim: column_solution(m, weight, bias, index, aim)
    errors = {}
    if split.fit.count and split.held.count:
        for name, solve in candidates.items():
            errors[name] = expected_error(split.held, goal, index, *solve(split.fit))
        chosen = min(errors, key=errors.get)
    else:
        chosen = "dense-ridge:0.01" if target_dims else "ridge:0.01"  # one batch only: nothing to hold out
    solution, offset = candidates[chosen](split.total)
    recovery = Recovery(scale=torch.ones_like(offset), bias=offset, weight=solution.T.contiguous(), fit=chosen)
    return recovery, {"chosen": chosen, "held_out_error": errors}
