"""Several processes (``torchrun --nproc-per-node N -m slimllm prune ...``): the calibration
batches are split across processes, each walks the layers on its share, and every streaming
statistic is merged across processes (``torch.distributed`` all-reduce: gloo on CPU, NCCL on
GPUs) before anything is decided from it. Every process therefore takes the same decisions and
computes the same refits; the result equals the one-process result up to the order of the
float64 sums.

The merge is Chan et al.'s pairwise update done as two all-reduces: the counts and weighted
means give the global mean, then each process's centred second moments, shifted to it, are
summed (no process's covariance is gathered whole).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slimllm.stats import HeldOutMoments, Moments, PairedColumnMoments


@dataclass(frozen=True)
class BatchShare:
    """This process's calibration batches: ``count`` of them from global batch ``first`` of ``total``."""

    first: int
    count: int
    total: int


_share: BatchShare | None = None


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(device: str | None) -> torch.device | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); return this process's
    device (its own GPU under ``--device cuda``), or None when running alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = bool(device) and str(device).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def share_windows(windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This process's contiguous block of the calibration batches (all of them when alone); the
    global batch numbering is kept for the held-out split (:func:`global_batches`)."""
    global _share
    total = -(-windows.shape[0] // batch_size)
    world = world_size()
    if world == 1:
        _share = None
        return windows
    if total < world:
        raise ValueError(
            f"{world} processes need at least {world} calibration batches; --nsamples {windows.shape[0]} "
            f"with --batch-size {batch_size} gives {total}"
        )
    first, end = rank() * total // world, (rank() + 1) * total // world
    _share = BatchShare(first, end - first, total)
    return windows[first * batch_size : end * batch_size]


def global_batches(local_count: int) -> tuple[int, int]:
    """``(number of this process's first batch, total batches)`` for a walk over ``local_count`` batches."""
    if _share is None or world_size() == 1:
        return 0, local_count
    if local_count != _share.count:
        raise RuntimeError(f"a walk over {local_count} batches, but this process holds {_share.count}")
    return _share.first, _share.total


# -- merging the statistics ------------------------------------------------------------------------
def _sum(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def merge_moments(moments: Moments) -> None:
    """Make ``moments`` those of every process's rows together (in place; a no-op when alone)."""
    if world_size() == 1:
        return
    count = _sum(torch.tensor([float(moments.count)], dtype=torch.float64, device=moments.mean.device))
    mean = _sum(moments.mean * moments.count) / count
    delta = moments.mean - mean
    shift = torch.outer(delta, delta) if moments.full else delta * delta
    moments._m2 = _sum(moments._m2 + shift * moments.count)
    moments.mean, moments.count = mean, int(count.item())


def merge_paired(moments: PairedColumnMoments) -> None:
    if world_size() == 1:
        return
    device = moments.mean_target.device
    count = _sum(torch.tensor([float(moments.count)], dtype=torch.float64, device=device))
    mean_target = _sum(moments.mean_target * moments.count) / count
    mean_approx = _sum(moments.mean_approx * moments.count) / count
    d_target, d_approx = moments.mean_target - mean_target, moments.mean_approx - mean_approx
    moments._m2_approx = _sum(moments._m2_approx + d_approx * d_approx * moments.count)
    moments._cross = _sum(moments._cross + d_approx * d_target * moments.count)
    moments.mean_target, moments.mean_approx, moments.count = mean_target, mean_approx, int(count.item())


def merge_held_out(moments: HeldOutMoments) -> None:
    merge_moments(moments.fit)
    merge_moments(moments.held)


def merge_sums(*values: float) -> list[float]:
    """Each of ``values`` summed over the processes (float64)."""
    if world_size() == 1:
        return list(values)
    return _sum(torch.tensor(values, dtype=torch.float64)).tolist()
