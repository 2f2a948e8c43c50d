"""Structured Optimal Brain Surgeon: remove the input groups whose loss a least-squares refit
repairs best (beyond the paper; SlimGPT, Ling et al., NeurIPS 2024; ZipLM, Kurtic et al., 2023).

A projection y = W x (W: outputs × n) loses the input features S. If the remaining weights are
refitted by least squares on inputs with covariance Σ, the smallest possible increase of
E‖Δy‖² is (with H⁻¹ = (Σ + λI)⁻¹, W_S the columns in S)

    ΔE(S) = tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ),

and after the removal the refitted weights and the inverse on the remaining features are

    W ← W − W_S [H⁻¹]_SS⁻¹ [H⁻¹]_S·,     H⁻¹ ← H⁻¹ − [H⁻¹]_·S [H⁻¹]_SS⁻¹ [H⁻¹]_S·.

Removing the cheapest group, updating, and repeating is the greedy order. The ridge recovery
(``--recovery ridge``) refits exactly this objective afterwards, so the order chooses the heads
and channels that recovery can best do without; the paper's scores rank units as they stand,
before any refit. The covariance is centred: the refit has an intercept (the new bias).
"""

from __future__ import annotations

import torch

from slimllm.importance import AttentionStats, MlpStats, Selection
from slimllm.surgery import head_rows

DAMPING = 0.01  # λ as a fraction of the mean input variance, as GPTQ and SlimGPT damp H


def damped_inverse(covariance: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """(Σ + λI)⁻¹, λ = ``damping`` · mean diag Σ, in float64."""
    sigma = covariance.to(torch.float64)
    ridge = damping * sigma.diagonal().mean().clamp(min=1e-30)
    eye = torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(sigma + ridge * eye))


def greedy_removal(
    covariance: torch.Tensor, weight: torch.Tensor, num_remove: int, damping: float = DAMPING
) -> tuple[list[int], list[float]]:
    """The first ``num_remove`` single input features (columns of ``weight``) in greedy OBS order,
    and the error increase ΔE of each removal given the ones before it."""
    w = weight.detach().to(covariance.device, torch.float64).clone()
    hinv = damped_inverse(covariance, damping)
    removed_mask = torch.zeros(w.shape[1], dtype=torch.bool, device=w.device)
    order, costs = [], []
    column_norms = (w * w).sum(0)
    for _ in range(num_remove):
        scores = column_norms / hinv.diagonal()
        scores[removed_mask] = torch.inf
        j = int(torch.argmin(scores))
        order.append(j)
        costs.append(float(scores[j]))
        h_row = hinv[j] / hinv[j, j]
        w -= torch.outer(w[:, j], h_row)
        hinv -= torch.outer(hinv[:, j], h_row)
        removed_mask[j] = True
        column_norms = (w * w).sum(0)
    return order, costs


def _removal_cost(w: torch.Tensor, hinv: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """ΔE(S) = tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ)."""
    w_s = w[:, s]
    return (w_s * torch.linalg.solve(hinv[s][:, s], w_s.T).T).sum()


def group_costs(covariance: torch.Tensor, weight: torch.Tensor, groups: list[list[int]], damping: float = DAMPING):
    """ΔE of removing each group alone (float64 tensor, one value per group)."""
    w = weight.detach().to(covariance.device, torch.float64)
    hinv = damped_inverse(covariance, damping)
    return torch.stack([_removal_cost(w, hinv, torch.tensor(g, dtype=torch.long, device=w.device)) for g in groups])


def greedy_group_removal(
    covariance: torch.Tensor, weight: torch.Tensor, groups: list[list[int]], num_remove: int, damping: float = DAMPING
) -> tuple[list[int], list[float]]:
    """The first ``num_remove`` groups (lists of input features) in greedy OBS order, and the
    error increase of each removal given the ones before it."""
    w = weight.detach().to(covariance.device, torch.float64).clone()
    hinv = damped_inverse(covariance, damping)
    index = [torch.tensor(g, dtype=torch.long, device=w.device) for g in groups]
    remaining = list(range(len(groups)))
    order, costs = [], []
    for _ in range(num_remove):
        best, best_cost = None, None
        for g in remaining:
            cost = float(_removal_cost(w, hinv, index[g]))
            if best_cost is None or cost < best_cost:
                best, best_cost = g, cost
        s = index[best]
        step = torch.linalg.solve(hinv[s][:, s], hinv[s])  # [H⁻¹]_SS⁻¹ [H⁻¹]_S·
        w -= w[:, s] @ step
        hinv -= hinv[:, s] @ step
        remaining.remove(best)
        order.append(best)
        costs.append(best_cost)
    return order, costs


def _kept(width: int, removed: list[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(width) if i not in gone]


class ObsHeads:
    """Heads (units) removed in greedy OBS order on the ``o_proj`` input covariance."""

    name = "obs"
    needs_full_moments = False  # the o_proj input's covariance is always kept in full

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        head_dim = stats.parts.head_dim
        groups = [head_rows(unit, head_dim) for unit in stats.units]
        covariance, weight = stats.o_input.covariance, stats.parts.o_proj.weight
        order, _ = greedy_group_removal(covariance, weight, groups, num_prune)
        return Selection(_kept(len(groups), order), group_costs(covariance, weight, groups).tolist())


class ObsChannels:
    """FFN channels removed in greedy OBS order on the ``down_proj`` input covariance (which
    needs the full moments of the hidden activations: ``needs_full_moments``)."""

    name = "obs"
    needs_full_moments = True

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        if stats.hidden_split is None:
            raise ValueError("the OBS channel order needs the full covariance of the down_proj input")
        width = stats.parts.width
        covariance = stats.memo.get("hidden-covariance")
        if covariance is None:
            covariance = stats.memo["hidden-covariance"] = stats.hidden_split.total.covariance[:width, :width]
        weight = stats.parts.down_proj.weight
        order = stats.memo.get(self.name, [])
        if len(order) < num_prune:  # the greedy order does not depend on how far it goes
            order = stats.memo[self.name] = greedy_removal(covariance, weight, num_prune)[0]
        scores = stats.memo.get("obs-scores")
        if scores is None:  # ΔE of each channel alone: ‖W_j‖² / [H⁻¹]_jj
            w = weight.detach().to(covariance.device, torch.float64)
            scores = stats.memo["obs-scores"] = ((w * w).sum(0) / damped_inverse(covariance).diagonal()).tolist()
        return Selection(_kept(width, order[:num_prune]), scores)
