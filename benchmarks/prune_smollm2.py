"""Pruning cost and quality of `slimllm prune` on the bundled SmolLM2-135M.

Measures, for each ratio: the pruning wall time of `slimllm prune` as a fresh process (median of
``--repeats`` runs; the report's in-process time, which excludes model loading, and the
end-to-end process time, which includes it), the peak resident memory of that process, the
realised ratio, and WikiText-2 / PTB perplexity (LLM-Pruner protocol, 128-token windows, full
sets unless ``--ppl-limit``) of the dense and the pruned models.

    python benchmarks/prune_smollm2.py --out benchmarks/results/prune-smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prune_process(arguments: list[str], output: Path) -> tuple[float, float, dict]:
    """One `slimllm prune ... --output OUTPUT` process: its wall time, peak RSS (MiB) and report."""
    command = [sys.executable, "-m", "slimllm", "prune", *arguments, "--output", str(output), "--overwrite", "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    report = json.loads((output / "slimllm_report.json").read_text())
    return wall, usage.ru_maxrss / 1024, report  # Linux reports KiB


def run_prune(ratio: float, output: Path, extra: list[str]) -> dict:
    """One `slimllm prune` process: its wall time, peak RSS and report."""
    wall, peak_rss_mib, report = prune_process(["smollm2-135m", "--ratio", str(ratio), *extra], output)
    return {
        "process_wall_s": wall,
        "prune_s": report["seconds"]["total"],
        "load_model_s": report["seconds"]["load_model"],
        "peak_rss_mib": peak_rss_mib,
        "realised_ratio": report["params"]["realised_ratio"],
        "params": report["params"]["pruned"],
        "dense_params": report["params"]["dense"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/prune-smollm2-135m")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl", default="wikitext2,ptb")
    parser.add_argument("--ppl-limit", type=int, default=None, help="first N windows only (default: full sets)")
    args = parser.parse_args()

    import torch

    import slimllm
    from slimllm.eval import perplexity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="slimllm-bench-"))
    ratios = [float(r) for r in args.ratios.split(",")]
    sources = [s for s in args.ppl.split(",") if s]
    results: dict = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "settings": {"repeats": args.repeats, "ppl_seqlen": 128, "ppl_limit": args.ppl_limit},
        "runs": {},
        "perplexity": {},
    }
    try:
        for ratio in ratios:
            runs = [run_prune(ratio, work / f"r{ratio}", []) for _ in range(args.repeats)]
            results["runs"][str(ratio)] = {
                "each": runs,
                "median_prune_s": statistics.median(r["prune_s"] for r in runs),
                "median_process_wall_s": statistics.median(r["process_wall_s"] for r in runs),
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
            print(f"ratio {ratio}: {results['runs'][str(ratio)]}", flush=True)

        models = {"dense": "smollm2-135m", **{str(r): str(work / f"r{r}") for r in ratios}}
        for name, source in models.items():
            model, tokenizer = slimllm.load(source)
            results["perplexity"][name] = {}
            for data in sources:
                ppl = perplexity(model, tokenizer, data, seqlen=128, limit=args.ppl_limit, progress=False)
                results["perplexity"][name][data] = ppl
                print(f"{name} {data}: {ppl['ppl']:.3f} ({ppl['windows']} windows, {ppl['wall_s']:.0f} s)", flush=True)
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results, ratios, sources) + "\n")
    print(render_markdown(results, ratios, sources))
    return 0


def render_markdown(results: dict, ratios: list[float], sources: list[str]) -> str:
    lines = [
        f"`{results['command']}` — {results['machine']['cpus']} CPUs, {results['machine']['platform']}",
        "",
        "| model | params | realised ratio | prune s (median, load excluded) | process s (median, load included) "
        "| peak RSS MiB | " + " | ".join(f"{s} PPL" for s in sources) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(sources),
    ]
    dense_params = next(iter(results["runs"].values()))["each"][0]["dense_params"] if results["runs"] else None
    ppl = results["perplexity"]
    lines.append(
        f"| dense | {dense_params:,} | 0 | – | – | – | "
        + " | ".join(f"{ppl['dense'][s]['ppl']:.2f}" for s in sources)
        + " |"
    )
    for ratio in ratios:
        run = results["runs"][str(ratio)]
        first = run["each"][0]
        lines.append(
            f"| SlimLLM {ratio:.0%} | {first['params']:,} | {first['realised_ratio']:.4f} "
            f"| {run['median_prune_s']:.1f} | {run['median_process_wall_s']:.1f} | {run['max_peak_rss_mib']:.0f} | "
            + " | ".join(f"{ppl[str(ratio)][s]['ppl']:.2f}" for s in sources)
            + " |"
        )
    windows = {s: ppl["dense"][s]["windows"] for s in sources}
    lines += ["", f"Perplexity: 128-token windows, {windows} windows per set (LLM-Pruner protocol)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
