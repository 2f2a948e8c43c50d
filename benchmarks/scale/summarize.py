"""results.md from the JSON rows benchmarks/scale/run.py wrote.

python benchmarks/scale/summarize.py benchmarks/results/scale
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from slimllm.eval.task_table import task_label
from slimllm.eval.uncertainty import paired_difference


def zero_shot_table(models: list[tuple[str, dict]]) -> list[str]:
    """Accuracy per task with its standard error, the mean, its difference to the first row (dense)
    with the paired standard error, and the majority answer's score on the same documents (every
    row is checked to have been scored on the first row's documents)."""
    first = models[0][1]["tasks"]
    tasks = list(first)
    for label, row in models:
        if any(row["tasks"][t]["doc_ids"] != first[t]["doc_ids"] for t in tasks):
            raise SystemExit(f"{label}: scored on other documents than {models[0][0]}")
    documents = "/".join(sorted({str(first[t]["documents"]) for t in tasks}))
    header = " | ".join(f"{task_label(t)} ({first[t]['headline_metric']})" for t in tasks)
    lines = ["", f"Zero-shot accuracy (%, ± standard error) on the same seeded {documents} documents per task, "]
    lines[-1] += f"bfloat16; the mean's difference to {models[0][0]} with the paired standard error:"
    lines += ["", f"| model | {header} | mean | − {models[0][0]} | wall |", "|---" * (len(tasks) + 4) + "|"]
    chance = [100 * first[t]["majority"]["rate"] for t in tasks]
    cells = " | ".join(f"{c:.1f}" for c in chance)
    lines.append(f"| majority answer | {cells} | {statistics.fmean(chance):.1f} | – | – |")
    for label, row in models:
        results = row["tasks"]
        cells = " | ".join(
            f"{100 * results[t]['headline']:.1f} ± {100 * results[t]['headline_stderr']:.1f}"
            + ("†" if results[t]["headline"] <= first[t]["majority"]["rate"] else "")
            for t in tasks
        )
        mean = 100 * statistics.fmean(results[t]["headline"] for t in tasks)
        paired = paired_difference(results, first)
        change = "–" if row is models[0][1] else f"{100 * paired['difference']:+.1f} ± {100 * paired['stderr']:.1f}"
        lines.append(f"| {label} | {cells} | {mean:.1f} | {change} | {row['wall_s']:.0f} s |")
    lines += ["", "†: no better than always giving the task's most frequent answer on the same documents."]
    return lines


def main(folder: Path) -> None:
    rows = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    for row in rows.values():  # a command recorded without its interpreter
        if row.get("command", "").startswith("-m "):
            row["command"] = "python " + row["command"]
    lines = ["# Qwen2.5-Coder-1.5B-Instruct: out of core, in memory; one and two processes", ""]
    lines += ["| run | wall | pruning | peak RSS | parameters (decoder ratio) |", "|---|---|---|---|---|"]
    for name in ("qwen-20-out-of-core", "qwen-20-in-memory", "qwen-30-out-of-core"):
        if name in rows:
            row = rows[name]
            params = row["params"]
            lines.append(
                f"| `{row['command']}` | {row['wall_s']:.0f} s | {row['seconds']['total']:.0f} s | "
                f"{row['peak_rss_gib']:.2f} GiB | {params['dense']:,} → {params['pruned']:,} "
                f"({params['realised_ratio']:.4f}) |"
            )
    if "conversion" in rows:
        row = rows["conversion"]
        lines += ["", f"One-time conversion of the built-in (GGUF → safetensors in the cache, one tensor at a time): "
                  f"{row['wall_s']:.0f} s, peak {row['peak_rss_gib']:.2f} GiB."]  # fmt: skip
        if "conversion-whole-model" in rows:
            old = rows["conversion-whole-model"]
            lines[-1] += (f" Through transformers' whole-model GGUF load (before): {old['wall_s']:.0f} s, "
                          f"peak {old['peak_rss_gib']:.2f} GiB.")  # fmt: skip
        if "conversion-identical" in rows:
            same = rows["conversion-identical"]
            lines[-1] += f" The two folders: {same['tensors']} tensors, {len(same['differing'])} differ."
    if "qwen-20-identical" in rows:
        row = rows["qwen-20-identical"]
        lines += ["", f"Out of core vs in memory at 20%: {row['tensors']} tensors, {len(row['differing'])} differ."]
    lines += ["", "| model | WikiText-2 PPL | × dense | windows |", "|---|---|---|---|"]
    dense = rows.get("ppl-dense", {}).get("ppl")
    for name, label in (("ppl-dense", "dense"), ("ppl-20", "20% of the decoder"), ("ppl-30", "30% of the decoder")):
        if name in rows:
            ppl = rows[name]["ppl"]
            ratio = f"{ppl / dense:.2f}×" if dense else "–"
            lines.append(f"| {label} | {ppl:.2f} | {ratio} | first {rows[name]['windows']} of 128 tokens |")
    dense256 = rows.get("ppl256-dense", {}).get("ppl")
    labels = {"out-of-core": "slimllm default", "best": "`--preset best`", "flap": "FLAP (`--method flap`)"}
    quality = [("ppl256-dense", "dense", None)] + [
        (f"ppl256-{ratio}-{mode}", f"{label}, {ratio}% of the decoder", f"qwen-{ratio}-{mode}")
        for ratio in ("20", "30") for mode, label in labels.items()
    ]  # fmt: skip
    if any(name in rows for name, _, _ in quality):
        lines += ["", "| model (256 windows) | WikiText-2 PPL | × dense | prune wall | peak RSS |"]
        lines += ["|---|---|---|---|---|"]
        for name, label, prune in quality:
            if name in rows:
                ppl = rows[name]["ppl"]
                ratio = f"{ppl / dense256:.2f}×" if dense256 else "–"
                cost = rows.get(prune or "", {})
                timing = f"{cost['wall_s']:.0f} s | {cost['peak_rss_gib']:.2f} GiB" if "wall_s" in cost else "– | –"
                if cost.get("resumed"):  # killed and resumed: the layers' own seconds add up, the wall does not
                    layers = f"{sum(cost['layer_seconds']):,.0f} s of layers" if "layer_seconds" in cost else "–"
                    part = cost.get("resumed_part")
                    rss = (
                        f"{part['peak_rss_gib']:.2f} GiB (layers {part['layers'][0]}-{part['layers'][1]})"
                        if part
                        else "–"
                    )
                    timing = f"resumed; {layers} | {rss}"
                lines.append(f"| {label} | {ppl:.2f} | {ratio} | {timing} |")
    zero_shot = [("tasks-dense", "dense")]
    zero_shot += [
        (f"tasks-{r}-{mode}", f"{label}, {r}% of the decoder") for r in ("20", "30") for mode, label in labels.items()
    ]
    zero_shot = [(name, label) for name, label in zero_shot if name in rows]
    if zero_shot:
        lines += zero_shot_table([(label, rows[name]) for name, label in zero_shot])
    if "tasks-dense" in rows and "tasks-dense-piqa-float32" in rows:
        wide, narrow = rows["tasks-dense-piqa-float32"]["tasks"]["piqa"], rows["tasks-dense"]["tasks"]["piqa"]
        differ = sum(a != b for a, b in zip(wide["correct"], narrow["correct"], strict=True))
        lines += ["", f"The dense model's PIQA documents in float32: {100 * wide['headline']:.1f} against "]
        lines[-1] += f"{100 * narrow['headline']:.1f} in bfloat16; {differ} of {wide['documents']} scored otherwise."
    if "allocations" in rows:
        lines += [
            "",
            "What each pruned model keeps per layer, layers 0-27 (query heads of 12; FFN channels in % of 8,960):",
            "",
        ]
        for name, kept in rows["allocations"]["kept"].items():
            ratio, mode = name.split("-", 1)
            channels = " ".join(f"{100 * c / 8960:.0f}" for c in kept["channels"])
            lines += [f"- {labels[mode]}, {ratio}%: heads {' '.join(map(str, kept['heads']))}; channels {channels}"]
    if "processes-1" in rows and "processes-2" in rows:
        lines += [
            "",
            "| SmolLM2-135M at 20%, 128 × 128 calibration | dense cosine pass | pruning walk | total | wall |",
        ]
        lines += ["|---|---|---|---|---|"]
        for name in ("processes-1", "processes-2"):
            row, seconds = rows[name], rows[name]["seconds"]
            lines.append(
                f"| `{row['command']}` | {seconds['layer_cosines']:.1f} s | {seconds['prune_layers']:.1f} s | "
                f"{seconds['total']:.1f} s | {row['wall_s']:.1f} s |"
            )
        same = rows["processes-1"]["kept"] == rows["processes-2"]["kept"]
        lines += ["", f"Two processes keep the heads and channels of one: {'yes' if same else 'no'}."]
    lines += ["", "Commands:", "", "```bash"]
    lines += [row["command"] for row in rows.values() if "command" in row]
    lines += ["```", ""]
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
