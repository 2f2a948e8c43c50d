"""benchmarks/gpu/run.sh in its CPU dry-run mode: the steps a CUDA machine runs, on tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.real_model, pytest.mark.evaluation_text]


def test_gpu_benchmark_dry_run_prunes_evaluates_and_checks(tmp_path):
    env = {**os.environ, "SLIMLLM_PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh", str(tmp_path), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and len(summary["runs"]) == 3
    assert {(run["device"], run["dtype"]) for run in summary["runs"]} == {("cpu", "float32"), ("cpu", "bfloat16")}
    for run in summary["runs"]:
        assert abs(run["realised_ratio"] - 0.2) < 0.01 and run["wikitext2_ppl"] > 1
    # the same settings on the same device: the float32 "device" run must equal the reference
    assert summary["checks"] and summary["checks"][0]["relative_ppl_difference"] == pytest.approx(0, abs=1e-9)
    assert "float32 within 2% of the CPU: yes" in (tmp_path / "summary.md").read_text()
