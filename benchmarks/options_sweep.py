"""WikiText-2 perplexity of SmolLM2-135M pruned with each option, against calibration size and seed.

Each point is a fresh `slimllm prune` process (its report gives the pruning time and, for the
search, its KL on held-out calibration windows) and `slimllm eval --ppl wikitext2` on the first
``--ppl-limit`` windows of 128 tokens. Finished points are kept in ``--out``/results.json and
skipped on the next run, so the sweep can be stopped and resumed.

    python benchmarks/options_sweep.py --out benchmarks/results/options-sweep \
        --options default,ridge,search,best --sizes 32x128,128x512 --seeds 42,43,44
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune_smollm2 import prune_process

OPTIONS = {
    "default": [],
    "ridge": ["--recovery", "ridge"],
    "ridge-dense": ["--recovery", "ridge-dense"],
    "ridge-layer": ["--recovery", "ridge-layer"],
    "search": shlex.split("--method slimllm@search --search-steps 40 --search-minutes 8"),
    "search-ridge": shlex.split("--method slimllm@search --recovery ridge --search-steps 40 --search-minutes 8"),
    "obs-ridge": ["--method", "obs", "--recovery", "ridge"],
    "best": ["--preset", "best"],
    "flap": ["--method", "flap"],  # the strongest baseline, for the same seeds
}


def perplexity(model: Path, limit: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "eval.json"
        command = [sys.executable, "-m", "slimllm", "eval", str(model), "--ppl", "wikitext2", "--tasks", "none"]
        command += ["--ppl-limit", str(limit), "--json", str(result), "--no-progress"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())["models"][0]["perplexity"]["wikitext2"]["ppl"]


def point(ratio: float, option: str, size: str, seed: int, limit: int) -> dict:
    nsamples, seqlen = (int(v) for v in size.split("x"))
    arguments = ["smollm2-135m", "--ratio", str(ratio), *OPTIONS[option]]
    arguments += ["--nsamples", str(nsamples), "--seqlen", str(seqlen), "--seed", str(seed)]
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "pruned"
        wall, rss, report = prune_process(arguments, output)
        search = report["allocation"].get("search") or {}
        return {
            "ratio": ratio,
            "option": option,
            "size": size,
            "seed": seed,
            "command": "slimllm prune " + " ".join(arguments),
            "ppl": perplexity(output, limit),
            "prune_s": report["seconds"]["total"],
            "prune_phases_s": {k: round(v, 1) for k, v in report["seconds"].items()},
            "process_wall_s": wall,
            "peak_rss_mib": rss,
            "realised_ratio": report["params"]["realised_ratio"],
            "search_kl": [search["start_kl"], search["kl"]] if search else None,
            "search_evaluations": search.get("evaluations"),
        }


def render_markdown(points: list[dict], limit: int) -> str:
    out = [
        "# Options × calibration size × seed (SmolLM2-135M)",
        "",
        f"WikiText-2 perplexity, first {limit} windows of 128 tokens; prune time in seconds (2-core CPU).",
        "",
        "| ratio | option | calibration | seeds | PPL per seed | mean PPL | prune s (mean) | search KL start → end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["ratio"], p["option"], p["size"]), []).append(p)

    def tokens(size: str) -> tuple[int, int]:
        samples, length = (int(n) for n in size.split("x"))
        return samples * length, length

    for (ratio, option, size), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], tokens(kv[0][2]), kv[0][1])):
        rows.sort(key=lambda r: r["seed"])
        kls = "; ".join(f"{r['search_kl'][0]:.3f} → {r['search_kl'][1]:.3f}" for r in rows if r["search_kl"]) or "–"
        seeds = ", ".join(str(r["seed"]) for r in rows)
        ppls = ", ".join(format(r["ppl"], ".2f") for r in rows)
        contended = "*" if any(r.get("note") for r in rows) else ""
        out.append(
            f"| {ratio:.0%} | {option} | {size} | {seeds} | "
            f"{ppls} | {statistics.mean(r['ppl'] for r in rows):.2f} | "
            f"{statistics.mean(r['prune_s'] for r in rows):.0f}{contended} | {kls} |"
        )
    notes = sorted({p["note"] for p in points if p.get("note")})
    out += ["", *(f"\\* {note}." for note in notes)] if notes else []
    out += ["", "Commands: " + "; ".join(sorted({f"`{p['command']}`" for p in points}))]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/options-sweep")
    parser.add_argument("--ratios", default="0.2")
    parser.add_argument("--options", default="default,ridge,search,best")
    parser.add_argument("--sizes", default="32x128")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--ppl-limit", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    points = json.loads(store.read_text())["points"] if store.exists() else []
    done = {(p["ratio"], p["option"], p["size"], p["seed"]) for p in points}
    for ratio in (float(r) for r in args.ratios.split(",")):
        for size in args.sizes.split(","):
            for option in args.options.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    if (ratio, option, size, seed) in done:
                        continue
                    start = time.perf_counter()
                    points.append(point(ratio, option, size, seed, args.ppl_limit))
                    print(f"{ratio} {option} {size} seed {seed}: PPL {points[-1]['ppl']:.2f} "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
                    store.write_text(json.dumps({"ppl_limit": args.ppl_limit, "points": points}, indent=1) + "\n")
                    (out / "results.md").write_text(render_markdown(points, args.ppl_limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
