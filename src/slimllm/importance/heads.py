"""Attention-head importance by Pearson similarity, and Algorithm 1's greedy swap search.

Everything is computed from the mean-free second moments of the ``o_proj`` input X:
with V = ``o_proj.weight``ᵀ and V_j head j's rows, the per-column covariance of two heads'
contributions o_j = X_j V_j is

    C[c, j, k] = V_j[:, c]ᵀ Σ_jk V_k[:, c],

and for a kept set K (indicator m), per column c,

    Cov(O_c, S_c) = Σ_jk C[c,j,k] m_k,   Var(S_c) = mᵀ C_c m,   Var(O_c) = 1ᵀ C_c 1,

so P(O, S) = Σ_c |Cov| / sqrt(Var(O_c) Var(S_c)). No N×d×h activation tensor is ever built.
A "unit" is what gets pruned: one query head (``gqa=query``) or one key/value group
(``gqa=group``); a unit's contribution is the sum of its heads', so its C is a block sum.
"""

from __future__ import annotations

import torch


def head_contribution_covariance(covariance: torch.Tensor, o_weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """C[c, j, k] for every output column c and query heads j, k (float64, shape d × h × h)."""
    v = o_weight.detach().to(torch.float64).T  # (h·d_h, d): row convention y = x V
    sigma = covariance.to(torch.float64).to(v.device)
    num_heads = v.shape[0] // head_dim
    d = v.shape[1]
    contrib = torch.empty(d, num_heads, num_heads, dtype=torch.float64, device=v.device)
    for k in range(num_heads):
        block = slice(k * head_dim, (k + 1) * head_dim)
        t_k = sigma[:, block] @ v[block]  # (h·d_h, d): Σ_{·k} V_k
        contrib[:, :, k] = (v * t_k).reshape(num_heads, head_dim, d).sum(1).T
    return contrib


def group_units(contrib: torch.Tensor, units: list[list[int]]) -> torch.Tensor:
    """Block-sum C over units (lists of query heads) into a d × u × u tensor."""
    if all(len(unit) == 1 for unit in units) and [u[0] for u in units] == list(range(contrib.shape[1])):
        return contrib
    membership = torch.zeros(contrib.shape[1], len(units), dtype=contrib.dtype, device=contrib.device)
    for u, heads in enumerate(units):
        membership[heads, u] = 1.0
    return torch.einsum("cjk,ja,kb->cab", contrib, membership, membership)


class PearsonSimilarity:
    """P(O, S_K) for kept-unit sets K, from the unit covariance tensor C (d × u × u)."""

    def __init__(self, contrib: torch.Tensor):
        self.contrib = contrib
        self.row_sums = contrib.sum(1)  # R[c, k] = Σ_j C[c, j, k]: Cov(O_c, o_k,c)
        self.var_full = self.row_sums.sum(1)  # Var(O_c)

    def _ratio(self, cov: torch.Tensor, var_kept: torch.Tensor) -> torch.Tensor:
        denom = torch.sqrt(torch.clamp(self.var_full * var_kept, min=0.0))
        rho = torch.where(denom > 0, cov / torch.where(denom > 0, denom, 1.0), torch.zeros_like(cov))
        return rho.abs().sum(-1)

    def of_mask(self, mask: torch.Tensor) -> float:
        m = mask.to(self.contrib.dtype)
        cov = self.row_sums @ m
        var_kept = torch.einsum("cjk,j,k->c", self.contrib, m, m)
        return float(self._ratio(cov, var_kept))

    def leave_one_out(self) -> torch.Tensor:
        """P(O, O − o_i) for every unit i (the paper's head score is its negative)."""
        c_diag = torch.diagonal(self.contrib, dim1=1, dim2=2)  # (d, u): Var(o_i)
        cov = self.var_full[:, None] - self.row_sums  # Cov(O, O − o_i)
        var_kept = self.var_full[:, None] - 2 * self.row_sums + c_diag  # Var(O − o_i)
        return self._ratio(cov.T, var_kept.T)

    def swaps(self, mask: torch.Tensor, incoming: int, outgoing: list[int]) -> torch.Tensor:
        """P(O, S_K') for K' = K − k + ``incoming``, for every k in ``outgoing`` (vectorised)."""
        m = mask.to(self.contrib.dtype)
        cm = torch.einsum("cjk,k->cj", self.contrib, m)  # (C m)_j per column
        cov = self.row_sums @ m
        var_kept = (cm * m).sum(1)
        out = torch.tensor(outgoing, device=self.contrib.device)
        i = incoming
        c_ii = self.contrib[:, i, i]
        c_kk = self.contrib[:, out, out]
        c_ik = self.contrib[:, i, out]
        new_cov = cov[:, None] + self.row_sums[:, i, None] - self.row_sums[:, out]
        new_var = var_kept[:, None] + 2 * (cm[:, i, None] - cm[:, out]) + c_ii[:, None] + c_kk - 2 * c_ik
        return self._ratio(new_cov.T, new_var.T)


def greedy_search(
    similarity: PearsonSimilarity, num_prune: int, *, greedy: bool = True
) -> tuple[list[int], list[float]]:
    """Algorithm 1: start from the ``num_prune`` least important units, then for each pruned
    candidate (in score order) apply the single best swap with a kept unit if it raises
    P(O, S_K). One pass; a unit swapped out is not reconsidered. Returns (kept units, scores),
    scores being P(O, O − o_i) per unit (higher = safer to prune)."""
    scores = similarity.leave_one_out()
    num_units = scores.numel()
    order = sorted(range(num_units), key=lambda unit: (-float(scores[unit]), unit))
    pruned, kept = order[:num_prune], order[num_prune:]
    if num_prune == 0 or not greedy:
        return sorted(kept), scores.tolist()
    mask = torch.zeros(num_units, dtype=torch.float64, device=scores.device)
    mask[kept] = 1.0
    best = similarity.of_mask(mask)
    for candidate in pruned:
        values = similarity.swaps(mask, candidate, kept)
        position = int(torch.argmax(values))
        if float(values[position]) > best:
            outgoing = kept[position]
            kept[position] = candidate
            mask[outgoing], mask[candidate] = 0.0, 1.0
            best = float(values[position])
    return sorted(kept), scores.tolist()
