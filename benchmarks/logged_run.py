"""What the benchmark drivers share: run one command line, its output appended to a log."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path


def run_logged(command: list[str], log: Path) -> float:
    """Run ``command`` with its output appended to ``log`` (after the command itself); return its
    wall time. A failure stops the driver, naming the command and the log."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if finished.returncode:
        raise SystemExit(f"failed ({finished.returncode}): {shlex.join(command)}; see {log}")
    return time.perf_counter() - start
