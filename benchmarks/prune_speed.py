"""How fast `slimllm prune` is against one dense forward pass, how much memory it takes, and how
much a busy core slows it (issue 11), on the bundled SmolLM2-135M at 20%.

Every prune is a fresh `slimllm prune` process; its pruning time is the report's in-process
``seconds.total`` (model loading excluded) and its peak RSS comes from ``wait4``. The dense forward
is timed in a fresh process over the same calibration windows in the same batches (logits
included), after one untimed warm-up pass. Busy runs prune while one CPU-bound process
(``while True: pass``) runs beside them for the whole run.

    python benchmarks/prune_speed.py --out benchmarks/results/prune-speed

Rows: the default (kept activations replayed, threads chosen per layer), ``--cache-gb 0``
(every pass recomputed: the passes slimllm made before), and the busy machine with the default
and with ``--threads 2`` (torch's own count on this machine, what slimllm used before).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from prune_smollm2 import prune_process  # benchmarks/, the script's own folder

MODEL = "smollm2-135m"

DENSE_FORWARD = """
import json, statistics, sys, time, torch, slimllm
from slimllm.data.sources import calibration_windows
nsamples, seqlen, repeats = map(int, sys.argv[1:4])
model, tokenizer = slimllm.load("{model}")
config = slimllm.PruneConfig(nsamples=nsamples, seqlen=seqlen)
windows, _ = calibration_windows(tokenizer, config.calib, nsamples, seqlen, config.seed)
def forward():
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, nsamples, config.batch_size):
            model(input_ids=windows[first : first + config.batch_size], use_cache=False)
    return time.perf_counter() - start
forward()
times = [forward() for _ in range(repeats)]
print(json.dumps({{"each_s": times, "median_s": statistics.median(times), "threads": torch.get_num_threads()}}))
"""


@contextmanager
def busy_core(enabled: bool):
    """One CPU-bound process for the duration of the block."""
    if not enabled:
        yield
        return
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        yield
    finally:
        burner.kill()
        burner.wait()


def run_prune(output: Path, nsamples: int, seqlen: int, extra: list[str]) -> dict:
    arguments = [MODEL, "--ratio", "0.2", "--nsamples", str(nsamples), "--seqlen", str(seqlen), *extra]
    wall, peak_rss_mib, report = prune_process(arguments, output)
    return {
        "prune_s": report["seconds"]["total"],
        "phases_s": {k: report["seconds"][k] for k in ("layer_cosines", "prune_layers") if k in report["seconds"]},
        "process_wall_s": wall,
        "peak_rss_mib": peak_rss_mib,
        "activation_cache_mib": report["activation_cache"]["peak_bytes"] / 2**20,
        "threads_per_layer": report["threads"]["per_layer"],
        "realised_ratio": report["params"]["realised_ratio"],
    }


def dense_forward(nsamples: int, seqlen: int, repeats: int) -> dict:
    script = DENSE_FORWARD.format(model=MODEL)
    done = subprocess.run([sys.executable, "-c", script, str(nsamples), str(seqlen), str(repeats)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/prune-speed")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (the median is reported)")
    parser.add_argument("--large-repeats", type=int, default=1, help="runs of the 128 x 512 rows")
    parser.add_argument("--rows", default="quiet,recompute,large,busy,busy-threads2", help="which rows to run")
    parser.add_argument("--dry-run", action="store_true", help="one repeat of 4 x 32 tokens per row, no files")
    args = parser.parse_args()

    small, large = ((4, 32), (4, 64)) if args.dry_run else ((32, 128), (128, 512))
    repeats, large_repeats = (1, 1) if args.dry_run else (args.repeats, args.large_repeats)
    rows = {
        "quiet": (small, [], False, repeats),
        "recompute": (small, ["--cache-gb", "0"], False, repeats),
        "large": (large, [], False, large_repeats),
        "busy": (small, [], True, repeats),
        "busy-threads2": (small, ["--threads", "2"], True, repeats),
    }
    wanted = [name for name in args.rows.split(",") if name]
    unknown = set(wanted) - set(rows)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; known: {', '.join(rows)}")

    results: dict = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
        "dense_forward": {},
        "rows": {},
    }
    sizes = sorted({rows[name][0] for name in wanted})
    for nsamples, seqlen in sizes:
        size_repeats = large_repeats if (nsamples, seqlen) == large else repeats
        results["dense_forward"][f"{nsamples}x{seqlen}"] = dense_forward(nsamples, seqlen, size_repeats)
        print(f"dense forward {nsamples}x{seqlen}: {results['dense_forward'][f'{nsamples}x{seqlen}']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="slimllm-speed-") as work:
        for name in wanted:
            (nsamples, seqlen), extra, busy, count = rows[name]
            with busy_core(busy):
                runs = [run_prune(Path(work) / name, nsamples, seqlen, extra) for _ in range(count)]
            forward = results["dense_forward"][f"{nsamples}x{seqlen}"]["median_s"]
            median = statistics.median(r["prune_s"] for r in runs)
            results["rows"][name] = {
                "tokens": f"{nsamples}x{seqlen}",
                "options": extra,
                "busy_core": busy,
                "each": runs,
                "median_prune_s": median,
                "ratio_to_dense_forward": median / forward,
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
            print(f"{name}: {median:.1f} s = {median / forward:.2f} x dense forward", flush=True)
    for name in ("busy", "busy-threads2"):
        if name in results["rows"] and "quiet" in results["rows"]:
            row = results["rows"][name]
            row["slowdown_vs_quiet"] = row["median_prune_s"] / results["rows"]["quiet"]["median_prune_s"]
    if args.dry_run:
        print(json.dumps(results, indent=2))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results) + "\n")
    print(render_markdown(results))
    return 0


ROW_TITLES = {
    "quiet": "default",
    "recompute": "`--cache-gb 0` (every pass recomputed, as before)",
    "large": "default",
    "busy": "default, one core busy",
    "busy-threads2": "`--threads 2` (torch's count, as before), one core busy",
}


def render_markdown(results: dict) -> str:
    lines = [
        f"`{results['command']}` on {results['machine']['cpus']} CPUs ({results['machine']['platform']}); "
        f"load average at the start {', '.join(f'{v:.2f}' for v in results['machine']['load_average_at_start'])}",
        "",
        "| calibration tokens | run | pruning s (median) | × dense forward | peak RSS MiB | kept activations MiB "
        "| slowdown vs quiet |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        slowdown = f"{row['slowdown_vs_quiet']:.2f}" if "slowdown_vs_quiet" in row else "–"
        cache = max(r["activation_cache_mib"] for r in row["each"])
        lines.append(
            f"| {row['tokens'].replace('x', ' × ')} | {ROW_TITLES[name]} | {row['median_prune_s']:.1f} "
            f"| {row['ratio_to_dense_forward']:.2f} | {row['max_peak_rss_mib']:.0f} | {cache:.0f} | {slowdown} |"
        )
    lines += ["", "Dense forward (logits included), median: " + ", ".join(
        f"{size.replace('x', ' × ')}: {forward['median_s']:.2f} s ({forward['threads']} threads)"
        for size, forward in results["dense_forward"].items()
    )]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
