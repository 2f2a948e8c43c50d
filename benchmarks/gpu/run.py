"""Prune SmolLM2-135M on a CUDA device and check it against the CPU (issue 11, part 3).

For each ratio (20%, 50%): `slimllm prune` on the CPU in float32 (the reference), then on the
device in float32 and in bfloat16, each a fresh process (wall time, the prune's in-process time,
peak GPU memory from the report). Every pruned model is then loaded in float32 and scored on the
first ``--ppl-limit`` windows of WikiText-2; the float32 device models must be within 2% of the
CPU's. Everything goes to ``OUT/summary.json`` and ``OUT/summary.md``; the exit status is 1 if a
check fails.

    python benchmarks/gpu/run.py OUT                 # on a machine with CUDA
    python benchmarks/gpu/run.py OUT --dry-run       # anywhere: "device" = cpu, 20% only, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

FLOAT32_TOLERANCE = 0.02


def prune(out: Path, ratio: float, device: str, dtype: str, sizes: dict) -> dict:
    folder = out / f"smollm2-{int(ratio * 100)}-{device.replace(':', '')}-{dtype}"
    command = [sys.executable, "-m", "slimllm", "prune", "smollm2-135m", "--ratio", str(ratio),
               "--device", device, "--dtype", dtype, "--output", str(folder), "--overwrite", "--quiet",
               "--nsamples", str(sizes["nsamples"]), "--seqlen", str(sizes["seqlen"])]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    report = json.loads((folder / "slimllm_report.json").read_text())
    return {
        "folder": str(folder),
        "device": device,
        "dtype": dtype,
        "ratio": ratio,
        "process_wall_s": wall,
        "prune_s": report["seconds"]["total"],
        "peak_device_memory_mib": (report.get("device_memory") or {}).get("peak_allocated_bytes", 0) / 2**20,
        "realised_ratio": report["params"]["realised_ratio"],
    }


def wikitext_ppl(folder: str, device: str, limit: int) -> float:
    import slimllm
    from slimllm.eval import perplexity

    model, tokenizer = slimllm.load(folder, dtype="float32", device=device)
    result = perplexity(model, tokenizer, "wikitext2", limit=limit, progress=False)
    del model
    return result["ppl"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, 4 x 32 calibration tokens, 4 windows")
    parser.add_argument("--ppl-limit", type=int, default=256, help="first N WikiText-2 windows of 128 tokens")
    args = parser.parse_args()

    import torch
    from device import benchmark_device

    device = benchmark_device(args.dry_run, "benchmarks/gpu/run.py")
    if device is None:
        return 2
    sizes = {"nsamples": 4, "seqlen": 32} if args.dry_run else {"nsamples": 32, "seqlen": 128}
    ppl_limit = 4 if args.dry_run else args.ppl_limit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ratios = (0.2,) if args.dry_run else (0.2, 0.5)
    runs = []
    for ratio in ratios:
        for run_device, dtype in (("cpu", "float32"), (device, "float32"), (device, "bfloat16")):
            run = prune(out, ratio, run_device, dtype, sizes)
            run["wikitext2_ppl"] = wikitext_ppl(run["folder"], device, ppl_limit)
            runs.append(run)
            print(json.dumps(run), flush=True)
    checks = []
    for ratio in ratios:
        reference = next(r for r in runs if r["ratio"] == ratio and r["device"] == "cpu")
        for run in runs:
            if run["ratio"] != ratio or run is reference:
                continue
            relative = run["wikitext2_ppl"] / reference["wikitext2_ppl"] - 1
            run["ppl_vs_cpu"] = relative
            if run["dtype"] == "float32":
                passed = abs(relative) <= FLOAT32_TOLERANCE
                checks.append({"ratio": ratio, "relative_ppl_difference": relative, "passed": passed})
    summary = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "dry_run": args.dry_run,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "calibration": sizes,
        "ppl_windows": ppl_limit,
        "runs": runs,
        "checks": checks,
        "wall_s": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))
    return 0 if all(check["passed"] for check in checks) else 1


def markdown(summary: dict) -> str:
    lines = [
        f"`{summary['command']}` on {summary['device_name']} ({summary['machine']['platform']}, torch "
        f"{summary['machine']['torch']}); calibration {summary['calibration']['nsamples']} x "
        f"{summary['calibration']['seqlen']} tokens; WikiText-2 PPL on the first {summary['ppl_windows']} windows",
        "",
        "| ratio | device | dtype | prune s | process s | peak GPU MiB | realised ratio | WikiText-2 PPL | vs CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        versus = f"{run['ppl_vs_cpu']:+.2%}" if "ppl_vs_cpu" in run else "reference"
        lines.append(
            f"| {run['ratio']:.0%} | {run['device']} | {run['dtype']} | {run['prune_s']:.1f} "
            f"| {run['process_wall_s']:.1f} | {run['peak_device_memory_mib']:.0f} | {run['realised_ratio']:.4f} "
            f"| {run['wikitext2_ppl']:.2f} | {versus} |"
        )
    passed = all(check["passed"] for check in summary["checks"])
    lines += ["", f"float32 within {FLOAT32_TOLERANCE:.0%} of the CPU: {'yes' if passed else 'NO'}; "
              f"whole run {summary['wall_s']:.0f} s"]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
