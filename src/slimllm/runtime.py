"""Small things every command needs once: parameter counts, the software stack's versions,
atomic file writes, and handing memory back between models."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import time
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
    trim_heap()


def trim_heap() -> None:
    """Hand the heap pages of freed blocks back to the OS (glibc's ``malloc_trim``; nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _busy_ticks() -> tuple[int, int] | None:
    """(ticks every CPU spent busy, ticks in all) since boot, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class CoreShare:
    """Runs torch on the cores that other processes leave free.

    torch's OpenMP threads spin while they wait for each other, so when another process holds a
    core, a thread that shares it stalls every parallel region: two threads on a two-core
    machine with one core taken ran 5-6x slower, not 2x. :meth:`adjust`, called between units of
    work (each layer), measures how many cores *other* processes kept busy since the last call
    (all CPUs' busy time from /proc/stat less this process's own CPU time) and sets torch's thread
    count to the cores left, at least one. ``fixed`` pins the count instead. The thread count
    torch had is restored on exit.
    """

    def __init__(self, fixed: int | None = None):
        self.fixed = fixed
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.used: list[int] = []  # the thread count of each unit of work
        self._ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = None

    def __enter__(self) -> CoreShare:
        self._previous = torch.get_num_threads()
        self._online = os.cpu_count() or self.cores
        if self.fixed is not None:
            torch.set_num_threads(self.fixed)
        self._last = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._previous)

    def _sample(self):
        ticks = _busy_ticks()
        return None if ticks is None else (ticks, time.process_time(), time.perf_counter())

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last call (None where it cannot be told)."""
        now, last = self._sample(), self._last
        if now is None or last is None:
            return None
        (busy, total), cpu, wall = now
        (busy0, total0), cpu0, wall0 = last
        if wall - wall0 < 0.1 or total <= total0:  # too short to tell at the clock's 10 ms ticks
            return None
        self._last = now
        all_busy = (busy - busy0) / (total - total0) * self._online  # busy cores, over every CPU
        own = (cpu - cpu0) / (wall - wall0)
        return max(0.0, all_busy - own)

    def adjust(self) -> int:
        """Set torch's thread count for the next unit of work; returns it."""
        if self.fixed is not None:
            threads = self.fixed
        else:
            others = self.others_busy()
            threads = torch.get_num_threads() if others is None else max(1, self.cores - round(others))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        self.used.append(threads)
        return threads
