"""benchmarks/gpu/scale.py in its CPU dry-run mode (random models: no checkpoint, no evaluation text)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_scale_benchmark_dry_run_builds_prunes_and_summarises(tmp_path):
    """benchmarks/gpu/scale.py on the CPU with its tiny shape: a random folder, one prune row, a summary."""
    command = [sys.executable, "benchmarks/gpu/scale.py", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
               "--dry-run", "--runs", "tiny:default"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = json.loads((tmp_path / "out" / "tiny-default.json").read_text())
    assert row["exit"] == 0 and row["params"]["realised_ratio"] == pytest.approx(0.2, abs=0.01)
    assert row["peak_rss_gib"] > 0 and row["model"]["params"] == row["params"]["dense"]
    assert "| tiny | default |" in (tmp_path / "out" / "summary.md").read_text()
