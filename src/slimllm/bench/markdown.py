"""results.md of a benchmark run: the tables and how to read them, from the summary numbers."""

from __future__ import annotations

from slimllm.bench.summary import accuracy_stderr, majority_rates
from slimllm.eval.report import PPL_LABELS
from slimllm.eval.task_table import chance_of_mean, task_label


def _fmt(s: dict | None, digits: int = 2, scale: float = 1.0) -> str:
    if not s:
        return "–"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["std"] is not None:
        text += f" ± {s['std'] * scale:.{digits}f}"
    return text


def percent(ratio) -> str:
    return f"{100 * ratio:g}%"


def markdown(results: dict) -> str:
    spec, rows, dense = results["settings"], results["rows"], results["dense"]
    lines = [f"# `slimllm bench` on {results['model']}", ""]
    runs = results.get("invocations") or []
    if runs:
        lines += ["Measured by:", "", "```"]
        lines += [f"{run['command']}    # {run['wall_s'] / 60:.1f} min, {run['cells_run']} cells" for run in runs]
        lines += ["```", ""]
    elif results.get("command"):
        lines += ["```", results["command"], "```", ""]
    wall = results["wall_s"]
    lines += [
        f"Wall time: {wall['invocations'] / 60:.1f} min over {len(results['invocations'])} invocation(s) of the "
        f"command (resumed runs add up); the cells themselves took {wall['cells_total'] / 60:.1f} min"
        + (
            " (more than the wall time: some invocations ran in parallel)"
            if wall["cells_total"] > wall["invocations"]
            else ""
        )
        + f". Machine: {_machine(results['machine'])}.",
        "",
        "**What was measured** (identical for every row):",
        "",
    ]
    lines += [f"- {text}" for text in _protocol(spec, dense)]
    if results.get("skipped"):
        lines += ["", f"**Not measured** (time budget): {', '.join(results['skipped'])}."]
    lines.append("")
    ppl_sources = list(dense["eval"]["perplexity"]) if dense else spec["ppl"]
    tasks = list(dense["eval"]["zero_shot"]["tasks"]) if dense and dense["eval"].get("zero_shot") else []
    for ratio in sorted({r["ratio"] for r in rows if r["ratio"] is not None}):
        lines += _quality_table(rows, ratio, dense, ppl_sources, tasks)
    if results["standings"]:
        lines += _standings_text(results["standings"])
    if results.get("paired"):
        lines += _paired_table(results["paired"])
    if results["ablations"]:
        lines += _ablation_table(results["ablations"], ppl_sources, bool(results["speed"]))
    if results["speed"]:
        lines += _speed_table(results["speed"], results["settings"]["speed"])
    lines += ["## Plots", ""]
    for name, title in (
        ("layers", "Per-layer cosine similarity and allocated ratio (the paper's Figure 2)"),
        ("perplexity", "Perplexity against the pruning ratio"),
        ("accuracy", "Average zero-shot accuracy against the pruning ratio"),
    ):
        if name in results["plots"]:
            lines += [f"![{title}]({results['plots'][name]})", ""]
    lines += [
        "Every number, per seed and per task, with the settings and versions, is in `results.json`; "
        "one file per cell in `cells/`.",
        "",
    ]
    return "\n".join(lines)


def _machine(machine: dict) -> str:
    parts = [
        machine.get("cpu", "CPU"),
        f"{machine.get('cpu_count')} cores",
        f"{machine.get('torch_threads')} torch threads",
    ]
    if machine.get("gpu"):
        parts.insert(0, machine["gpu"])
    if machine.get("load_average_at_start"):
        parts.append(f"load average at start {machine['load_average_at_start'][0]:.1f} (shared machine)")
    return ", ".join(str(p) for p in parts)


def _protocol(spec: dict, dense: dict | None) -> list[str]:
    out = []
    calib = "the calibration text"
    cal = (dense or {}).get("calibration")
    if cal:
        calib = cal.get("origin") or cal.get("source") or calib
    seeds = spec.get("seeds_run") or []
    out.append(
        f"Calibration: {spec['nsamples']} windows of {spec['calib_seqlen']} tokens from `{spec['calib']}` "
        f"({calib}); seeds {', '.join(map(str, seeds))} for the main rows (mean ± std over seeds where more "
        f"than one finished), the first seed for ablations, options and --round-to rows."
    )
    limit = spec["ppl_limit"]
    windows = f"the first {limit} windows" if limit else "all windows"
    out.append(
        f"Perplexity: {', '.join(PPL_LABELS.get(s, s) for s in spec['ppl'])}, {windows} of {spec['seqlen']} "
        "tokens (LLM-Pruner protocol: texts joined with blank lines, non-overlapping windows, exp of the mean NLL)."
    )
    if spec["tasks"]:
        docs = (
            f"a seeded random subset of {spec['task_limit']} documents per task (all of a task that has fewer)"
            if spec["task_limit"]
            else "all documents"
        )
        out.append(
            f"Zero-shot (lm-eval, 0-shot): {', '.join(task_label(t) for t in spec['tasks'])}; {docs} "
            f"(subset seed {spec['task_seed']}, the same documents for every model); acc for BoolQ, PIQA, "
            "WinoGrande, ARC-e, acc_norm for HellaSwag, ARC-c, OBQA; the average is their plain mean. Each "
            "document's result is kept in the cell files, so paired differences can be recomputed from them. "
            "Chance level of the average ≈ "
            f"{100 * chance_of_mean(spec['tasks']):.1f}%."
        )
    sp = spec["speed"]
    if sp["speed"]:
        out.append(
            f"Speed: prefill latency of batch 1 × {sp['prefill_tokens']} tokens and decode throughput of batch 1, "
            f"{sp['decode_tokens']} new tokens with the KV cache after a {sp['decode_prompt']}-token prompt; median "
            f"of {sp['speed_runs']} runs, pruned and dense models alternating; speed-up = dense time / pruned time "
            "(the dense model runs in the same model class). Ideal = dense / pruned parameter count."
        )
    codes = spec.get("code_versions") or {}
    if codes:
        described = "; ".join(f"`{sha}` ({n} cells)" for sha, n in codes.items())
        note = "" if len(codes) == 1 else " — more than one: compare rows measured with the same code"
        out.append(f"Code (hash of the pruning and evaluation sources): {described}{note}.")
    out.append(
        "Params: all parameters, embeddings included (tied embeddings once); the ratio column is the realised "
        "fraction removed. Prune time: wall time of `slimllm.prune` (calibration, statistics, surgery), the "
        "fastest of the row's seeds (on a shared machine the others mostly measure contention); peak RSS: "
        "the process's peak resident memory during pruning (the dense model already in memory included)."
    )
    return out


AT_MAJORITY = "†"


def _accuracy_cell(mean: float | None, stderr: float | None, seed_spread: float | None = None) -> str:
    if mean is None:
        return "–"
    text = f"{100 * mean:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else "")
    return text + (f" (seed sd {100 * seed_spread:.2f})" if seed_spread is not None else "")


def _task_cell(value: dict | None, majority: float | None) -> str:
    """A task's score, marked when it does not beat always giving the majority answer."""
    text = _fmt(value, 1, 100)
    if value and majority is not None and value["mean"] <= majority:
        text += AT_MAJORITY
    return text


def _table_majority(rows: list[dict], dense: dict | None) -> dict[str, float]:
    """Majority-answer rates of the evaluated documents (the same documents for every model)."""
    found = majority_rates(dense["eval"].get("zero_shot")) if dense else {}
    return found or next((r["majority"] for r in rows if r.get("majority")), {})


def _dense_cells(dense: dict, ppl_sources: list[str], tasks: list[str], majority: dict) -> list[str]:
    cells = ["dense", "–", f"{dense['params']['dense'] / 1e6:.2f}", "0%"]
    cells += [f"{dense['eval']['perplexity'][s]['ppl']:.2f}" for s in ppl_sources]
    zs = dense["eval"].get("zero_shot")
    if tasks:
        cells.append(_accuracy_cell(zs["mean"], accuracy_stderr(zs)) if zs else "–")
        scores = {t: {"mean": zs["tasks"][t]["headline"], "std": None} for t in tasks} if zs else {}
        cells += [_task_cell(scores.get(t), majority.get(t)) for t in tasks]
    return [*cells, "–", "–"]


def _row_cells(row: dict, ppl_sources: list[str], tasks: list[str], majority: dict) -> list[str]:
    name = row["label"] if row["kind"] == "main" else f"*{row['label']}*"
    cells = [name, ",".join(map(str, row["seeds"])), f"{row['params']['mean'] / 1e6:.2f}"]
    cells.append(f"{100 * row['realised_ratio']['mean']:.2f}%")
    cells += [_fmt(row["ppl"].get(s)) for s in ppl_sources]
    if tasks:
        acc = row["acc"]
        text = _accuracy_cell(acc and acc["mean"], row["acc_stderr"], acc and acc["std"])
        if acc and acc["n"] < len(row["seeds"]):
            text += f" (seed {','.join(map(str, row['acc_seeds']))})"
        cells.append(text)
        cells += [_task_cell(row["tasks"].get(t), majority.get(t)) for t in tasks]
    rss = _fmt(row["rss_peak_mib"], 0)
    if row["rss_increase_mib"]:
        rss += f" (+{row['rss_increase_mib']['mean']:.0f})"
    prune_s = f"{min(row['prune_s']['values']):.1f}" if row["prune_s"] else "–"
    return [*cells, prune_s, rss]


def _majority_cells(ppl_sources: list[str], tasks: list[str], majority: dict) -> list[str]:
    rates = [majority.get(t) for t in tasks]
    mean = sum(rates) / len(rates) if None not in rates else None
    cells = ["*majority answer*", "–", "–", "–", *("–" for _ in ppl_sources), _accuracy_cell(mean, None)]
    return [*cells, *(f"{100 * r:.1f}" if r is not None else "–" for r in rates), "–", "–"]


def _quality_table(rows: list[dict], ratio, dense: dict | None, ppl_sources: list[str], tasks: list[str]) -> list[str]:
    header = ["method", "seeds", "params (M)", "removed"]
    header += [f"{PPL_LABELS.get(s, s)} PPL ↓" for s in ppl_sources]
    header += ["avg acc % ↑ (± s.e.)"] if tasks else []
    header += [task_label(t) for t in tasks]
    header += ["prune s (min over seeds)", "peak RSS MiB (+ during pruning)"]
    lines = [f"## {percent(ratio)} of the parameters removed", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    majority = _table_majority(rows, dense) if tasks else {}
    table = [_dense_cells(dense, ppl_sources, tasks, majority)] if dense else []
    table += [_row_cells(row, ppl_sources, tasks, majority) for row in rows if row["ratio"] == ratio]
    if majority:
        table.append(_majority_cells(ppl_sources, tasks, majority))
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    lines.append("")
    if any(r["acc_stderr"] for r in rows if r["ratio"] == ratio):
        lines += [
            "Average accuracy ± its standard error over the documents: sqrt(Σ s.e.ᵢ²) / number of tasks, from "
            "lm-eval's per-task standard errors (seed sd: spread over calibration seeds where more than one "
            f"was evaluated). {AT_MAJORITY}: no better than always giving the task's most frequent answer on the "
            "same documents (the *majority answer* row). Ablation rows in italics.",
            "",
        ]
    return lines


def _standings_text(standings: list[dict]) -> list[str]:
    lines = ["## Where SlimLLM stands", ""]
    for ratio in sorted({s["ratio"] for s in standings}):
        items = [s for s in standings if s["ratio"] == ratio]
        behind = [s for s in items if not s["ahead"] and not s["tied"]]
        ahead_all = not behind and not any(s["tied"] for s in items)
        lines.append(
            f"**{percent(ratio)}**: SlimLLM is "
            + (
                "ahead of every baseline on every metric:"
                if ahead_all
                else f"behind on {len(behind)} and tied on {sum(s['tied'] for s in items)} of {len(items)} comparisons:"
            )
        )
        for s in items:
            name = "avg acc %" if s["metric"] == "acc" else f"{PPL_LABELS.get(s['metric'], s['metric'])} PPL"
            scale = 100 if s["metric"] == "acc" else 1
            verdict = "ahead" if s["ahead"] else ("tied" if s["tied"] else "**behind**")
            noise = " (within noise: " + s["noise_kind"] + ")" if s["within_noise"] else ""
            lines.append(
                f"- vs {s['baseline']}, {name}: SlimLLM {s['reference'] * scale:.2f} vs {s['other'] * scale:.2f} "
                f"→ {verdict}{noise}"
            )
        lines.append("")
    return lines


def _paired_table(paired: list[dict]) -> list[str]:
    lines = [
        "## SlimLLM against each baseline on the same documents",
        "",
        "| ratio | SlimLLM row | against | Δ avg acc (points) | paired s.e. | unpaired s.e. | Δ / paired s.e. |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for entry in paired:
        stderr, unpaired = entry["stderr"], entry["unpaired_stderr"]
        ratio_to_error = f"{entry['difference'] / stderr:+.1f}" if stderr else "–"
        lines.append(
            f"| {percent(entry['ratio'])} | {entry['reference']} | {entry['baseline']} "
            f"| {100 * entry['difference']:+.2f} | {_points(stderr)} | {_points(unpaired)} | {ratio_to_error} |"
        )
    lines += [
        "",
        "Δ = the SlimLLM row's average accuracy minus the other model's, on the same documents and calibration "
        "seed: the mean over tasks of the per-task mean of per-document differences (right = 1, wrong = 0). "
        "Paired s.e. = sqrt(Σ s.e.ₜ²) / number of tasks, s.e.ₜ from the per-document differences of task t; "
        "unpaired s.e. treats the two averages as independent. |Δ / paired s.e.| above 2 is a difference the "
        "document sample can tell apart from noise (calibration-seed spread not included).",
        "",
    ]
    return lines


def _points(value: float | None) -> str:
    return f"{100 * value:.2f}" if value is not None else "–"


def _ablation_table(ablations: list[dict], ppl_sources: list[str], speed_measured: bool) -> list[str]:
    header = ["ratio", "variant"]
    for s in ppl_sources:
        header += [f"{PPL_LABELS.get(s, s)} PPL", "Δ"]
    header += ["avg acc %", "Δ"]
    lines = ["## What each ablation and option costs (same calibration seed as the full method)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in ablations:
        cells = [percent(a["ratio"]), a["label"]]
        for s in ppl_sources:
            v = a.get(s)
            cells += [f"{v['variant']:.2f}", f"{v['variant'] - v['full']:+.2f}"] if v else ["–", "–"]
        acc = a.get("acc")
        cells += [f"{100 * acc['variant']:.2f}", f"{100 * (acc['variant'] - acc['full']):+.2f}"] if acc else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    note = "Δ is the variant minus the full method (positive Δ PPL = worse; negative Δ acc = worse)."
    if any("--round-to" in a["label"] for a in ablations):
        note += " `--round-to` rows show what the rounded FFN widths cost in quality"
        note += " (their speed is in the table below)." if speed_measured else "."
    return [*lines, "", note, ""]


def _speed_table(speed: list[dict], settings: dict) -> list[str]:
    lines = [
        "## Speed against the dense model",
        "",
        "| ratio | rows with these shapes | params (M) | ideal speed-up | prefill ms dense → pruned | prefill speed-up "
        "| decode tok/s dense → pruned | decode speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in sorted(speed, key=lambda e: (e["ratio"], -e["ideal_speedup"])):
        s = entry["speed"]
        lines.append(
            f"| {percent(entry['ratio'])} | {', '.join(entry['labels'])} | {entry['params'] / 1e6:.2f} "
            f"| ×{entry['ideal_speedup']:.2f} "
            f"| {1000 * s['dense']['prefill_s']:.0f} → {1000 * s['pruned']['prefill_s']:.0f} "
            f"| ×{s['prefill_speedup']:.2f} | {s['dense']['decode_tokens_per_s']:.1f} → "
            f"{s['pruned']['decode_tokens_per_s']:.1f} | ×{s['decode_speedup']:.2f} |"
        )
    lines += [
        "",
        f"Batch 1; prefill {settings['prefill_tokens']} tokens; decode {settings['decode_tokens']} tokens; median of "
        f"{settings['speed_runs']} alternating runs. Rows whose pruned models have identical shapes share one "
        "measurement. On a shared CPU the absolute times drift; the ratios compare runs taken side by side.",
        "",
    ]
    return lines
