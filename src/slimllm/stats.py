"""Streaming float64 statistics of activations.

Calibration activations are never kept: each batch is folded into running sums, so memory
depends on the feature width only, not on the number of calibration tokens. Means and
covariances are merged with Chan et al.'s pairwise update, which stays accurate when the mean
is large relative to the spread (a plain sum of squares minus squared mean does not).
"""

from __future__ import annotations

import torch


class NonFiniteActivationError(FloatingPointError):
    """An activation contained NaN or inf: the model or its dtype is broken for this input."""


def _as_rows(x: torch.Tensor, dim: int, where: str) -> torch.Tensor:
    rows = x.detach().reshape(-1, dim).to(torch.float64)
    # One float64 sum is finite exactly when every value is (activations cannot overflow it), and
    # costs a fraction of an elementwise isfinite over the whole batch.
    if not torch.isfinite(rows.sum()):
        raise NonFiniteActivationError(
            f"non-finite values (NaN/inf) in activations at {where}; try --dtype float32 or check the model"
        )
    return rows


def gram(rows: torch.Tensor, block: int = 256) -> torch.Tensor:
    """rowsᵀ rows, computing only the blocks on and above the diagonal and mirroring them: about
    60% of the multiplications of the full product for wide rows (BLAS has no symmetric
    rank-k update in torch), the same float64 sums."""
    dim = rows.shape[1]
    if dim <= 2 * block:
        return rows.T @ rows
    out = rows.new_empty(dim, dim)
    for start in range(0, dim, block):
        upper = rows[:, start : start + block].T @ rows[:, start:]
        out[start : start + block, start:] = upper
        out[start + block :, start : start + block] = upper[:, block:].T
    return out


class Moments:
    """Running count, mean and population covariance (or only the variance) of d-dim rows."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", *, full: bool = True, where: str = "activation"):
        self.dim = dim
        self.full = full
        self.where = where
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        shape = (dim, dim) if full else (dim,)
        self._m2 = torch.zeros(shape, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        rows = _as_rows(x, self.dim, self.where).to(self.mean.device)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        mean_b = rows.mean(0)
        centred = rows - mean_b
        m2_b = gram(centred) if self.full else (centred * centred).sum(0)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        correction = torch.outer(delta, delta) if self.full else delta * delta
        self._m2 += m2_b + correction * (n_a * n_b / n)
        self.mean += delta * (n_b / n)
        self.count = n

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance (divided by N), or the variances when ``full=False``."""
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        return self._m2 / self.count

    @property
    def variance(self) -> torch.Tensor:
        return self.covariance.diagonal() if self.full else self.covariance

    def leading(self, dim: int) -> Moments:
        """The moments of the first ``dim`` features alone."""
        out = Moments(dim, self.mean.device, full=self.full, where=self.where)
        out.count, out.mean = self.count, self.mean[:dim].clone()
        out._m2 = (self._m2[:dim, :dim] if self.full else self._m2[:dim]).clone()
        return out

    @property
    def square_sum(self) -> torch.Tensor:
        """Σ_n x_n² per feature: the squared L2 norm of each column over all tokens."""
        return self.count * (self.variance + self.mean**2)


class PairedColumnMoments:
    """Per-column moments of two aligned outputs (dense ``target`` and pruned ``approx``).

    Enough to fit ``target[:, c] ≈ a_c · approx[:, c] + b_c`` by least squares for every column c
    without storing either output.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu", where: str = "output"):
        self.dim = dim
        self.where = where
        self.count = 0
        self.mean_target = torch.zeros(dim, dtype=torch.float64, device=device)
        self.mean_approx = torch.zeros(dim, dtype=torch.float64, device=device)
        self._m2_approx = torch.zeros(dim, dtype=torch.float64, device=device)
        self._cross = torch.zeros(dim, dtype=torch.float64, device=device)

    def update(self, target: torch.Tensor, approx: torch.Tensor) -> None:
        t = _as_rows(target, self.dim, self.where).to(self.mean_target.device)
        a = _as_rows(approx, self.dim, self.where).to(self.mean_target.device)
        n_b = t.shape[0]
        if n_b == 0:
            return
        mt_b, ma_b = t.mean(0), a.mean(0)
        tc, ac = t - mt_b, a - ma_b
        n_a, n = self.count, self.count + n_b
        dt, da = mt_b - self.mean_target, ma_b - self.mean_approx
        weight = n_a * n_b / n
        self._m2_approx += (ac * ac).sum(0) + da * da * weight
        self._cross += (ac * tc).sum(0) + da * dt * weight
        self.mean_target += dt * (n_b / n)
        self.mean_approx += da * (n_b / n)
        self.count = n

    @property
    def var_approx(self) -> torch.Tensor:
        return self._m2_approx / self.count

    @property
    def cov_approx_target(self) -> torch.Tensor:
        return self._cross / self.count


def merged(a: Moments, b: Moments) -> Moments:
    """The moments of both streams together (Chan et al.'s pairwise merge)."""
    if a.dim != b.dim or a.full != b.full:
        raise ValueError("can only merge moments of the same shape")
    out = Moments(a.dim, a.mean.device, full=a.full, where=a.where)
    n = a.count + b.count
    if n == 0:
        return out
    delta = b.mean - a.mean
    correction = torch.outer(delta, delta) if a.full else delta * delta
    out._m2 = a._m2 + b._m2 + correction * (a.count * b.count / n)
    out.mean = a.mean + delta * (b.count / n)
    out.count = n
    return out


def held_out_batches(batches: int) -> int:
    """How many of ``batches`` calibration batches are held out where a choice is made on them:
    the last quarter, at least one, none when there is only one batch."""
    return max(1, batches // 4) if batches > 1 else 0


class HeldOutMoments:
    """Full moments of one input, kept apart for fitting batches and held-out batches.

    Batches arrive in order; the last ``held_out`` of ``batches`` go to :attr:`held`, the rest
    to :attr:`fit`. Used to choose a ridge penalty on calibration windows the fit did not see.
    """

    def __init__(self, dim: int, batches: int, device, where: str, *, first_batch: int = 0):
        """``batches`` in all; the ones this object sees start at number ``first_batch`` (a
        process's share, :mod:`slimllm.parallel`)."""
        self.held_out = held_out_batches(batches)
        self.first_held = batches - self.held_out
        self.fit = Moments(dim, device, where=where)
        self.held = Moments(dim, device, where=where)
        self._seen = first_batch

    def update(self, x: torch.Tensor) -> None:
        (self.held if self._seen >= self.first_held else self.fit).update(x)
        self._seen += 1

    @property
    def total(self) -> Moments:
        return merged(self.fit, self.held)
