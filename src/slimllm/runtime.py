"""Small things every command needs once: parameter counts, the software stack's versions,
atomic file writes, and handing memory back between models."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

# The packages whose versions every report records, under the same keys.
STACK = ("slimllm", "torch", "transformers", "safetensors", "tokenizers", "accelerate", "peft", "lm_eval", "datasets")


def count_parameters(module: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once), as the paper counts."""
    return sum(p.numel() for p in module.parameters())


def versions(*extra: str) -> dict[str, str | None]:
    """Python, the platform and the versions of :data:`STACK` (plus ``extra``); None if absent."""
    found: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (*STACK, *extra):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write through a temporary sibling, so a reader or an interrupted run never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, data, *, indent: int = 2, default=str) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, default=default) + "\n")


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so the next model's peak
    memory does not start from what an earlier one left allocated."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
