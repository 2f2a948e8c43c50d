"""FFN channel importance in the feature space of the FFN output (docs/method.md §4).

For output Y = H W_down (row convention) with covariance Cov(Y) = Q diag(M) Qᵀ:
    W' = W_down Q,  C_k = sigmoid(|M_k| / mean|M|),  I^d_j = ‖W'_j ⊙ C‖₂,
    I_j = ‖H[:, j]‖₂ · I^d_j + ‖X_L2 ⊙ W_gate^{(j)}‖₂ + ‖X_L2 ⊙ W_up^{(j)}‖₂.
The inputs are statistics: Cov(Y), Σ_n H²[n, j] and Σ_n X²[n, k]. Scaling Cov(Y) by any
constant leaves C unchanged, so population or sample covariance give the same scores.
"""

from __future__ import annotations

import torch


def output_direction_weights(output_covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, C): principal directions of the output and their sigmoid weights."""
    eigenvalues, eigenvectors = torch.linalg.eigh(output_covariance.to(torch.float64))
    magnitude = eigenvalues.abs()
    scale = magnitude.mean()
    weights = torch.sigmoid(magnitude / scale) if scale > 0 else torch.full_like(magnitude, 0.5)
    return eigenvectors, weights


def down_projection_importance(
    down_weight: torch.Tensor, output_covariance: torch.Tensor | None, feature_space: bool = True
) -> torch.Tensor:
    """I^d_j for every channel j. ``down_weight`` is PyTorch's (d × d_ff) ``down_proj.weight``.

    Without ``feature_space`` (the ablation) every direction has the same weight, so I^d_j is
    the plain norm of channel j's output vector (a rotation preserves norms)."""
    w = down_weight.detach().to(torch.float64).T  # (d_ff, d): row j is channel j's output vector
    if not feature_space or output_covariance is None:
        return w.norm(dim=1)
    q, weights = output_direction_weights(output_covariance.to(w.device))
    return ((w @ q) * weights).norm(dim=1)


def channel_importance(
    *,
    gate_weight: torch.Tensor,
    up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    output_covariance: torch.Tensor | None,
    hidden_square_sum: torch.Tensor,
    input_square_sum: torch.Tensor,
    feature_space: bool = True,
) -> torch.Tensor:
    """I_j for every intermediate channel (float64, length d_ff)."""
    x_l2 = input_square_sum.to(torch.float64).clamp(min=0).sqrt().to(gate_weight.device)
    h_l2 = hidden_square_sum.to(torch.float64).clamp(min=0).sqrt().to(gate_weight.device)
    down_term = h_l2 * down_projection_importance(down_weight, output_covariance, feature_space)
    gate_term = (gate_weight.detach().to(torch.float64) * x_l2).norm(dim=1)
    up_term = (up_weight.detach().to(torch.float64) * x_l2).norm(dim=1)
    return down_term + gate_term + up_term


def select_channels(importance: torch.Tensor, num_prune: int, keep_lowest: float = 0.0) -> list[int]:
    """Kept channel indices (sorted). Prunes the ``num_prune`` least important channels after
    sparing the lowest ``round(keep_lowest · d_ff)`` (the authors' code spares the lowest 1%)."""
    width = importance.numel()
    num_prune = max(0, min(num_prune, width - 1))
    spared = min(round(keep_lowest * width), width - num_prune - 1) if num_prune else 0
    order = torch.argsort(importance.cpu(), stable=True).tolist()
    pruned = set(order[spared : spared + num_prune])
    return [j for j in range(width) if j not in pruned]
