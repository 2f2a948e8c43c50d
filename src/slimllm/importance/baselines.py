"""The scoring maths of the baseline criteria from the structured-pruning literature.

The criterion objects that use these scores are in :mod:`slimllm.methods` (one file a method).

Each criterion scores the same structures SlimLLM prunes (query heads, or key/value groups with
``--gqa group``, and FFN channels) and keeps all but the ``num_prune`` lowest. They see the same
streaming statistics (:class:`~slimllm.importance.AttentionStats`, :class:`~slimllm.importance.MlpStats`)
taken on inputs that went through the already-pruned earlier layers, so every method runs through
one pipeline, surgery and saving. Notation: ``W_o`` = ``o_proj.weight`` (d × h·d_h), whose
column c reads input feature c; ``W_down`` = ``down_proj.weight`` (d × d_ff).

- ``magnitude`` (FLAP's "magnitude-sp"): a head's score is Σ_{c∈head} ‖W_o[:, c]‖₂, a channel's
  ‖W_down[:, j]‖₂. As in FLAP's code, only the output projection's columns are used.
- ``wanda-sp`` (FLAP's structured Wanda): S_c = mean_i |W[i, c]| · ‖X_c‖₂ with X the input of
  ``o_proj``/``down_proj`` over all calibration tokens; a head sums S_c over its columns.
- ``flap`` (FLAP, WIFV metric): m_c = Var(X_c) · ‖W[:, c]‖₂². For attention FLAP squares it,
  standardises m_c² over the layer's columns and averages over each head's columns; for the FFN it
  standardises m_j over the layer's channels. Standardised scores are what FLAP's adaptive
  structure compares across layers (see :class:`FlapAllocation`).
- ``taylor`` (LLM-Pruner, ``param_first``): Σ |w · ∂L/∂w| over every weight of the structure,
  with gradients of the calibration LM loss on the dense model (see :class:`TaylorScores`).
- ``random``: uniform random scores from a seeded generator (the floor).

A key/value head shared by several query heads (grouped-query attention, not in the papers) is
split evenly: each of its g query heads is credited 1/g of the k/v term (Taylor) — the criteria
that read only ``o_proj`` need no such rule.
"""

from __future__ import annotations

import torch

from slimllm.importance import Selection, lowest_scores_pruned


# -- helpers -------------------------------------------------------------------------------------
def per_head(column_scores: torch.Tensor, head_dim: int, reduce: str = "sum") -> torch.Tensor:
    """Column scores of ``o_proj`` (length h·d_h) reduced to one score per query head."""
    blocks = column_scores.reshape(-1, head_dim)
    return blocks.sum(1) if reduce == "sum" else blocks.mean(1)


def per_unit(head_scores: torch.Tensor, units: list[list[int]]) -> torch.Tensor:
    """Query-head scores summed over each prunable unit."""
    return torch.stack([head_scores[u].sum() for u in units])


def standardise(x: torch.Tensor) -> torch.Tensor:
    """FLAP's ``(x − mean) / std`` over one layer's structures (unbiased std, as torch.std)."""
    x = x.to(torch.float64)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def selection(scores: torch.Tensor, num_prune: int) -> Selection:
    """Prune the ``num_prune`` lowest ``scores``; keep the scores for the plan."""
    scores = scores.detach().to(torch.float64).cpu()
    return Selection(lowest_scores_pruned(scores, num_prune), scores.tolist())


def weight64(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.weight.detach().to(torch.float64)


# -- wanda-sp -------------------------------------------------------------------------------------
def wanda_columns(weight: torch.Tensor, input_square_sum: torch.Tensor) -> torch.Tensor:
    """mean_i |W[i, c]| · ‖X_c‖₂ for every input column c."""
    norms = input_square_sum.to(torch.float64).clamp(min=0).sqrt().to(weight.device)
    return (weight.abs() * norms).mean(0)


# -- FLAP -----------------------------------------------------------------------------------------
def fluctuation(weight: torch.Tensor, input_variance: torch.Tensor) -> torch.Tensor:
    """WIFV: Var(X_c) · ‖W[:, c]‖₂² for every input column c."""
    return input_variance.to(torch.float64).to(weight.device) * weight.pow(2).sum(0)


def flap_head_scores(o_weight: torch.Tensor, input_variance: torch.Tensor, head_dim: int, units) -> torch.Tensor:
    """Standardised (WIFV)² of the ``o_proj`` columns, averaged over each unit's columns."""
    z = standardise(fluctuation(o_weight.detach().to(torch.float64), input_variance) ** 2)
    blocks = z.reshape(-1, head_dim)
    return torch.stack([blocks[u].mean() for u in units])


def flap_channel_scores(down_weight: torch.Tensor, hidden_variance: torch.Tensor) -> torch.Tensor:
    """Standardised WIFV of the ``down_proj`` columns."""
    return standardise(fluctuation(down_weight.detach().to(torch.float64), hidden_variance))
