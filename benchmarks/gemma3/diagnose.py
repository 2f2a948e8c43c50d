"""Why does Gemma-3-270M lose so much to pruning? Methods and parts compared at one parameter count.

Every row prunes the built-in gemma3-270m with `slimllm prune` (its ratio counted against the
decoder, as the embeddings hold 64% of the model) and scores WikiText-2 perplexity over the first
256 windows of 128 tokens, each after a <bos> token (`slimllm eval --bos`). At 20% of the decoder:
the default, `--preset best` and each half of it (`--recovery ridge-layer`; 128 windows of 512
tokens), the paper's ablation without the output regression, FLAP, Wanda-SP,
magnitude, and FFN-only. The attention alone cannot give 20% (a layer keeps at least one of its 4
heads: at most 17.6% of the decoder), so attention-only against FFN-only against both runs at 10%.

Rows already measured (their JSON in --out) are skipped, so an interrupted run continues.

    python benchmarks/gemma3/diagnose.py --work /tmp/gemma3-diagnosis --out benchmarks/gemma3/results/diagnosis
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the drivers' shared helpers
from logged_run import run_logged

DENSE = "gemma3-270m"
ROWS = {
    "dense": None,
    "slimllm-20": ["--ratio", "0.2"],
    "slimllm-20 best": ["--ratio", "0.2", "--preset", "best"],
    # what of "best" matters: its recovery at the default calibration, or its calibration alone
    "slimllm-20 ridge-layer": ["--ratio", "0.2", "--recovery", "ridge-layer"],
    "slimllm-20 128x512": ["--ratio", "0.2", "--nsamples", "128", "--seqlen", "512"],
    "slimllm-20 no regression": ["--ratio", "0.2", "--no-regression"],
    "flap-20": ["--ratio", "0.2", "--method", "flap"],
    "wanda-sp-20": ["--ratio", "0.2", "--method", "wanda-sp"],
    "magnitude-20": ["--ratio", "0.2", "--method", "magnitude"],
    "slimllm-20 ffn only": ["--ratio", "0.2", "--only", "ffn"],
    "slimllm-10": ["--ratio", "0.1"],
    "slimllm-10 attention only": ["--ratio", "0.1", "--only", "attention"],
    "slimllm-10 ffn only": ["--ratio", "0.1", "--only", "ffn"],
}


def slug(name: str) -> str:
    return name.replace(" ", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder for the pruned models")
    parser.add_argument("--out", required=True, help="folder for the per-row JSON results, logs and table")
    parser.add_argument("--rows", default="all", help="comma-separated row names (default: all)")
    args = parser.parse_args()
    wanted = set(ROWS) if args.rows == "all" else set(args.rows.split(","))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    slimllm_bin = [sys.executable, "-m", "slimllm"]
    for name, prune_args in ROWS.items():
        result_path = out / f"{slug(name)}.json"
        if name not in wanted or result_path.is_file():
            continue
        log, result, commands = out / "logs" / f"{slug(name)}.log", {"name": name}, []
        model = DENSE
        if prune_args is not None:
            model = str(work / slug(name))
            command = [*slimllm_bin, "prune", DENSE, *prune_args, "--ratio-of", "decoder"]
            command += ["--output", model, "--overwrite", "--quiet"]
            result["prune_wall_s"] = run_logged(command, log)
            commands.append(shlex.join(["slimllm", *command[3:]]))
            report = json.loads((Path(model) / "slimllm_report.json").read_text())
            result["params"] = report["params"]
            result["layers"] = [
                {key: row[key] for key in ("layer", "ratio", "heads", "kv_heads", "channels")}
                for row in report["layers"]
            ]
        eval_json = out / "logs" / f"{slug(name)}.eval.json"
        command = [*slimllm_bin, "eval", model, "--ppl", "wikitext2", "--tasks", "none", "--ppl-limit", "256", "--bos"]
        result["eval_wall_s"] = run_logged([*command, "--no-progress", "--json", str(eval_json)], log)
        commands.append(shlex.join(["slimllm", *command[3:]]))
        evaluated = json.loads(eval_json.read_text())["models"][0]
        result.update(parameters=evaluated["parameters"], ppl=evaluated["perplexity"]["wikitext2"]["ppl"])
        result["commands"] = commands
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: PPL {result['ppl']:.2f}, {result['parameters']:,} parameters", flush=True)
    write_table(out)


def write_table(out: Path) -> None:
    results = {name: out / f"{slug(name)}.json" for name in ROWS}
    results = {name: json.loads(path.read_text()) for name, path in results.items() if path.is_file()}
    dense = results["dense"]
    lines = [
        "# Gemma-3-270M pruned: methods and parts at one parameter count",
        "",
        "WikiText-2 perplexity, first 256 windows of 128 tokens, each after a <bos> token; ratios of the decoder.",
        "",
        "| model | parameters | decoder removed | heads kept | FFN channels kept | PPL | × dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        heads = sum(layer["heads"] for layer in row.get("layers", [])) or "–"
        channels = sum(layer["channels"] for layer in row.get("layers", [])) or "–"
        removed = f"{row['params']['realised_ratio']:.1%}" if "params" in row else "–"
        lines.append(
            f"| {name} | {row['parameters']:,} | {removed} | {heads} | {channels} | {row['ppl']:.2f} "
            f"| {row['ppl'] / dense['ppl']:.2f}× |"
        )
    lines += ["", "Commands:", "", "```bash"]
    lines += [command for row in results.values() for command in row["commands"]]
    lines += ["```", ""]
    (out / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
