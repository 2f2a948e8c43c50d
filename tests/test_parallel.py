"""Several processes (:mod:`slimllm.parallel`): statistics merged across processes equal the
statistics of all the rows, and ``torchrun --nproc-per-node 2 -m slimllm prune`` gives the
plan of one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimllm  # noqa: F401  (registers the pruned-model classes with transformers)
from tiny_models import FAMILIES, byte_tokenizer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*arguments: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


# Each process folds its own rows (rank r: rows r, r + 2, ..., in uneven batches) into the
# streaming statistics, merges them, and the first one writes what it got.
_MERGE_WORKER = """
import json, sys
import torch, torch.distributed as dist
from slimllm import parallel
from slimllm.stats import HeldOutMoments, Moments, PairedColumnMoments

dist.init_process_group("gloo")
rank = dist.get_rank()
rows = torch.randn(70, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 10
approx = rows * 0.5 + torch.randn(70, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
mine = slice(0, 40) if rank == 0 else slice(40, 70)  # uneven shares
full, diag, paired = Moments(5), Moments(5, full=False), PairedColumnMoments(5)
for start in range(mine.start, mine.stop, 9):
    block = slice(start, min(start + 9, mine.stop))
    full.update(rows[block]); diag.update(rows[block]); paired.update(rows[block], approx[block])
parallel.merge_moments(full); parallel.merge_moments(diag); parallel.merge_paired(paired)
total, count = parallel.merge_sums(float(rows[mine].sum()), float(rows[mine].numel()))
if rank == 0:
    json.dump({"count": full.count, "mean": full.mean.tolist(), "covariance": full.covariance.tolist(),
               "variance": diag.variance.tolist(), "paired_count": paired.count,
               "cov_approx_target": paired.cov_approx_target.tolist(), "var_approx": paired.var_approx.tolist(),
               "sum": total, "numel": count}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_statistics_merged_across_processes_equal_those_of_all_rows(tmp_path):
    worker, result = tmp_path / "worker.py", tmp_path / "merged.json"
    worker.write_text(_MERGE_WORKER)
    finished = _torchrun(str(worker), str(result))
    assert finished.returncode == 0, finished.stderr[-2000:]
    merged = json.loads(result.read_text())
    rows = torch.randn(70, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 10
    approx = rows * 0.5 + torch.randn(70, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    centred = rows - rows.mean(0)  # the direct computation over the materialised rows
    covariance = centred.T @ centred / 70
    assert merged["count"] == merged["paired_count"] == 70
    torch.testing.assert_close(torch.tensor(merged["mean"], dtype=torch.float64), rows.mean(0))
    torch.testing.assert_close(torch.tensor(merged["covariance"], dtype=torch.float64), covariance)
    torch.testing.assert_close(torch.tensor(merged["variance"], dtype=torch.float64), covariance.diagonal())
    approx_centred = approx - approx.mean(0)
    torch.testing.assert_close(
        torch.tensor(merged["cov_approx_target"], dtype=torch.float64), (approx_centred * centred).mean(0)
    )
    torch.testing.assert_close(torch.tensor(merged["var_approx"], dtype=torch.float64), approx_centred.var(0, False))
    assert merged["numel"] == 350 and merged["sum"] == pytest.approx(float(rows.sum()), rel=1e-12)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("parallel")
    FAMILIES["qwen2"](vocab_size=257).save_pretrained(folder / "dense")
    byte_tokenizer().save_pretrained(folder / "dense")
    text = "\n\n".join(f"passage {i}: " + "the cat sat on the mat and looked at me " * 20 for i in range(40))
    (folder / "calib.txt").write_text(text)
    return folder / "dense", folder / "calib.txt"


@pytest.mark.parametrize(
    "options",
    [(), ("--recovery", "ridge-layer"), ("--method", "flap", "--in-memory")],
    ids=["default-out-of-core", "ridge-layer-held-out-split", "flap-in-memory"],
)
def test_two_processes_give_the_plan_of_one(options, source, tmp_path):
    dense, calib = source
    prune = ["-m", "slimllm", "prune", str(dense), "--ratio", "0.3", "--calib", str(calib), "--nsamples", "32"]
    prune += ["--seqlen", "32", "--quiet", "--threads", "1", *options]
    one = subprocess.run([sys.executable, *prune, "--output", str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(*prune, "--output", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]

    plans = [json.loads((tmp_path / name / "slimllm_plan.json").read_text())["layers"] for name in ("one", "two")]
    for layer in (*plans[0], *plans[1]):
        layer.pop("head_scores")  # float64 sums in another order: compared below, not bit for bit
    cosines = [[layer.pop("cosine") for layer in plan] for plan in plans]
    assert plans[0] == plans[1]  # the same heads, kv heads and channels kept in every layer
    assert cosines[0] == pytest.approx(cosines[1], abs=1e-12)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "two" / "slimllm_report.json").read_text())
    assert report["processes"] == 2


def test_more_processes_than_calibration_batches_is_a_clear_error(source, tmp_path):
    dense, calib = source
    prune = ["-m", "slimllm", "prune", str(dense), "--ratio", "0.3", "--calib", str(calib), "--nsamples", "8"]
    finished = _torchrun(*prune, "--seqlen", "32", "--quiet", "--output", str(tmp_path / "out"))
    assert finished.returncode != 0
    assert "2 processes need at least 2 calibration batches" in finished.stderr
