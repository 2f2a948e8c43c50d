"""The device of a GPU benchmark: CUDA, or the CPU for a ``--dry-run`` that checks the script anywhere."""

import sys


def benchmark_device(dry_run: bool, script: str) -> str | None:
    """``"cpu"`` for a dry run, ``"cuda"`` where CUDA is available; else None, with the reason printed."""
    import torch

    if dry_run:
        return "cpu"
    if not torch.cuda.is_available():
        print(f"{script}: no CUDA device here (use --dry-run to check the script)", file=sys.stderr)
        return None
    return "cuda"
