"""results.md and curves.png from the per-row JSON files benchmarks/distill/run.py wrote.

python benchmarks/distill/summarize.py benchmarks/results/distill
python benchmarks/distill/summarize.py benchmarks/results/distill/gemma3-270m
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TITLES = {
    "smollm2-135m": "Recovery on SmolLM2-135M: distillation, LoRA, full fine-tuning",
    "gemma3-270m": "Recovery on Gemma-3-270M, 20% of the decoder (WikiText-2 perplexity with <bos> per window)",
}
ORDER = [
    "dense",
    "slimllm-20",
    "slimllm-20 + distill",
    "slimllm-20 + lora",
    "slimllm-20 + distill at LoRA's time",
    "slimllm-20 + finetune-full",
    "flap-20",
    "flap-20 + distill",
    "slimllm-50",
    "slimllm-50 + distill",
    "slimllm-20 + distill 60 min",
    "slimllm-50 + distill 60 min",
]


def load_rows(folder: Path) -> list[dict]:
    rows = {json.loads(path.read_text())["name"]: json.loads(path.read_text()) for path in folder.glob("*.json")}
    return [rows[name] for name in ORDER if name in rows]


def task_mean(row: dict) -> str:
    """The seven tasks' mean headline accuracy (%) ± its standard error, as `slimllm eval` reports it."""
    tasks = row.get("tasks")
    if not tasks:
        return "–"
    return f"{100 * tasks['mean']:.2f} ± {100 * tasks['mean_stderr']:.2f}"


def table(rows: list[dict]) -> list[str]:
    dense = next(row for row in rows if row["name"] == "dense")["ppl_wikitext2"]
    lines = [
        "| model | recovery tokens | training time | peak RSS | WikiText-2 PPL (× dense) | held-out KL "
        "| top-1 = dense | 7-task mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        recovery = row.get("recovery")
        tokens = f"{recovery['tokens']:,}" if recovery else "–"
        minutes = f"{recovery['train_s'] / 60:.1f} min" if recovery else "–"
        memory = f"{recovery['peak_rss_gb']:.1f} GB" if recovery and "peak_rss_gb" in recovery else "–"
        ppl = row["ppl_wikitext2"]
        lines.append(
            f"| {row['name']} | {tokens} | {minutes} | {memory} | {ppl:.2f} ({ppl / dense:.2f}×) | "
            f"{row['held_out_kl']:.4f} | {100 * row['held_out_top1']:.1f}% | {task_mean(row)} |"
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Held-out KL against training tokens for every distillation run (the validation log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for row in rows:
        recovery = row.get("recovery")
        if not recovery or recovery["log"] != "slimllm_distill.json":
            continue
        per_step = recovery["tokens"] / recovery["steps"]
        points = [(entry["step"] * per_step, entry["kl"]) for entry in recovery["validation"]]
        axis.plot(*zip(*points, strict=True), "o-", label=row["name"])
    axis.set_xlabel("training tokens")
    axis.set_ylabel("held-out KL(dense ‖ model), nats/token")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(folder: Path) -> None:
    rows = load_rows(folder)
    dense = next(row for row in rows if row["name"] == "dense")["model"]
    lines = [f"# {TITLES[dense]}", ""]
    lines += table(rows)
    lines += ["", "Commands, in the order they ran:", "", "```bash"]
    lines += [command for row in rows for command in row.get("commands", [])]
    lines += ["```", ""]
    walls = [
        f"- {row['name']}: recovery {row['recovery_wall_s'] / 60:.1f} min wall"
        for row in rows
        if "recovery_wall_s" in row
    ]
    lines += ["Wall times (including model loading and the validations):", "", *walls, ""]
    (folder / "results.md").write_text("\n".join(lines))
    plot(rows, folder / "curves.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
