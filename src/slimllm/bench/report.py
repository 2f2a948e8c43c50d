"""results.json, results.md and the plots of a benchmark run, from its cell records."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from slimllm.bench.files import RESULTS_JSON, RESULTS_MD, write_record
from slimllm.eval.report import PPL_LABELS
from slimllm.eval.task_table import TASKS, chance_of_mean, task_label

PLOTS = {"layers": "layers.png", "perplexity": "perplexity.png", "accuracy": "accuracy.png"}


# -- numbers ---------------------------------------------------------------------------------------
def stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def _acc_stderr(zero_shot: dict | None) -> float | None:
    """Standard error of the task average from lm-eval's per-task standard errors."""
    if not zero_shot:
        return None
    errors = [t.get("headline_stderr") for t in zero_shot["tasks"].values()]
    if any(e is None or (isinstance(e, float) and math.isnan(e)) for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def summarise(records: list[dict]) -> list[dict]:
    """One row per (ratio, label): means (± std over seeds) of every number."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["ratio"], record["label"]), []).append(record)
    rows = []
    for (ratio, label), group in groups.items():
        group = sorted(group, key=lambda r: (r["seed"] is None, r["seed"]))
        first = group[0]
        ppl_sources = list(first["eval"]["perplexity"])
        with_tasks = [r for r in group if r["eval"].get("zero_shot")]
        row = {
            "ratio": ratio,
            "label": label,
            "kind": first["kind"],
            "seeds": [r["seed"] for r in group],
            "params": stat([r["params"]["pruned"] for r in group]),
            "realised_ratio": stat([r["params"]["realised_ratio"] for r in group]),
            "ppl": {s: stat([r["eval"]["perplexity"][s]["ppl"] for r in group]) for s in ppl_sources},
            "log_ppl": {s: stat([math.log(r["eval"]["perplexity"][s]["ppl"]) for r in group]) for s in ppl_sources},
            "acc": stat([r["eval"]["zero_shot"]["mean"] for r in with_tasks]),
            "acc_seeds": [r["seed"] for r in with_tasks],
            "acc_stderr": _acc_stderr(with_tasks[0]["eval"]["zero_shot"]) if with_tasks else None,
            "tasks": {
                t: stat([r["eval"]["zero_shot"]["tasks"][t]["headline"] for r in with_tasks])
                for t in (with_tasks[0]["eval"]["zero_shot"]["tasks"] if with_tasks else {})
            },
            "prune_s": stat([r["prune"]["wall_s"] for r in group if r.get("prune")]),
            "rss_peak_mib": stat([r["prune"]["memory"]["rss_peak_mib"] for r in group if r.get("prune")]),
            "rss_increase_mib": stat([r["prune"]["memory"]["rss_increase_mib"] for r in group if r.get("prune")]),
            "gpu_peak_mib": stat([r["prune"]["memory"]["gpu_peak_mib"] for r in group if r.get("prune")]),
            "speed": next((r["speed"] for r in group if r.get("speed")), None),
            "ideal_speedup": first["params"].get("ideal_speedup", 1.0),
            "shape_signature": first.get("shape_signature"),
        }
        rows.append(row)
    return rows


def _row(rows: list[dict], ratio, label: str) -> dict | None:
    return next((r for r in rows if r["ratio"] == ratio and r["label"] == label), None)


def _seed_value(records: list[dict], ratio, label: str, seed) -> dict | None:
    return next((r for r in records if r["ratio"] == ratio and r["label"] == label and r["seed"] == seed), None)


def standings(rows: list[dict], reference: str = "slimllm") -> list[dict]:
    """Where ``reference`` stands against every other main row, per ratio and metric."""
    out = []
    for ref in (r for r in rows if r["label"] == reference and r["kind"] == "main"):
        for other in rows:
            if other["ratio"] != ref["ratio"] or other["kind"] != "main" or other["label"] == reference:
                continue
            for metric in [*ref["ppl"], "acc"]:
                a = ref["acc"] if metric == "acc" else ref["ppl"].get(metric)
                b = other["acc"] if metric == "acc" else other["ppl"].get(metric)
                if not a or not b:
                    continue
                higher_better = metric == "acc"
                ahead = a["mean"] > b["mean"] if higher_better else a["mean"] < b["mean"]
                tied = math.isclose(a["mean"], b["mean"], rel_tol=1e-9, abs_tol=1e-12)
                ahead = ahead and not tied
                diff = abs(a["mean"] - b["mean"])
                if metric == "acc":
                    errors = [e for e in (ref["acc_stderr"], other["acc_stderr"]) if e is not None]
                    noise = 2 * math.sqrt(sum(e * e for e in errors)) if len(errors) == 2 else None
                    noise_kind = "2 standard errors of the document subsets"
                else:  # perplexities spread multiplicatively over seeds: judge on log PPL
                    la, lb = ref["log_ppl"][metric], other["log_ppl"][metric]
                    spreads = [x["std"] for x in (la, lb) if x["std"] is not None]
                    noise = sum(spreads) if len(spreads) == 2 else None
                    diff = abs(la["mean"] - lb["mean"])
                    noise_kind = "log PPL differs by less than the sum of the seed standard deviations of log PPL"
                out.append(
                    {
                        "ratio": ref["ratio"],
                        "baseline": other["label"],
                        "metric": metric,
                        "reference": a["mean"],
                        "other": b["mean"],
                        "ahead": ahead,
                        "tied": tied,
                        "within_noise": noise is not None and diff < noise,
                        "noise": noise,
                        "noise_kind": noise_kind,
                    }
                )
    return out


def ablation_costs(records: list[dict], rows: list[dict]) -> list[dict]:
    """Each ablation against the full method on the same calibration seed."""
    out = []
    for row in rows:
        if row["kind"] not in ("ablation", "round_to"):
            continue
        seed = row["seeds"][0]
        variant = _seed_value(records, row["ratio"], row["label"], seed)
        full = _seed_value(records, row["ratio"], "slimllm", seed)
        if variant is None or full is None:
            continue
        entry = {"ratio": row["ratio"], "label": row["label"], "seed": seed}
        for source, value in variant["eval"]["perplexity"].items():
            entry[source] = {"full": full["eval"]["perplexity"][source]["ppl"], "variant": value["ppl"]}
        if variant["eval"].get("zero_shot") and full["eval"].get("zero_shot"):
            entry["acc"] = {"full": full["eval"]["zero_shot"]["mean"], "variant": variant["eval"]["zero_shot"]["mean"]}
        out.append(entry)
    return out


def speed_rows(rows: list[dict], records: list[dict]) -> list[dict]:
    """One row per distinct set of shapes that was timed, with every row label sharing it."""
    by_signature: dict[str, dict] = {}
    for row in rows:
        speed, signature = row["speed"], row["shape_signature"]
        if not speed or not signature:
            continue
        entry = by_signature.setdefault(
            signature,
            {
                "ratio": row["ratio"],
                "labels": [],
                "params": row["params"]["mean"],
                "ideal_speedup": row["ideal_speedup"],
                "speed": speed,
            },
        )
        entry["labels"].append(row["label"])
    return list(by_signature.values())


# -- formatting ------------------------------------------------------------------------------------
def _fmt(s: dict | None, digits: int = 2, scale: float = 1.0) -> str:
    if not s:
        return "–"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["std"] is not None:
        text += f" ± {s['std'] * scale:.{digits}f}"
    return text


def _pct(ratio) -> str:
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
        f"than one finished), the first seed for ablations and --round-to rows."
    )
    limit = spec["ppl_limit"]
    windows = f"the first {limit} windows" if limit else "all windows"
    out.append(
        f"Perplexity: {', '.join(PPL_LABELS.get(s, s) for s in spec['ppl'])}, {windows} of {spec['seqlen']} "
        "tokens (LLM-Pruner protocol: texts joined with blank lines, non-overlapping windows, exp of the mean NLL)."
    )
    if spec["tasks"]:
        docs = (
            f"a seeded random subset of {spec['task_limit']} documents per task"
            if spec["task_limit"]
            else "all documents"
        )
        out.append(
            f"Zero-shot (lm-eval, 0-shot): {', '.join(task_label(t) for t in spec['tasks'])}; {docs} "
            f"(subset seed {spec['task_seed']}, the same documents for every model); acc for BoolQ, PIQA, "
            "WinoGrande, ARC-e, acc_norm for HellaSwag, ARC-c, OBQA; the average is their plain mean. "
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


def _quality_table(rows: list[dict], ratio, dense: dict | None, ppl_sources: list[str], tasks: list[str]) -> list[str]:
    header = ["method", "seeds", "params (M)", "removed"]
    header += [f"{PPL_LABELS.get(s, s)} PPL ↓" for s in ppl_sources]
    header += ["avg acc % ↑"] if tasks else []
    header += [task_label(t) for t in tasks]
    header += ["prune s (min over seeds)", "peak RSS MiB (+ during pruning)"]
    lines = [f"## {_pct(ratio)} of the parameters removed", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    if dense:
        cells = ["dense", "–", f"{dense['params']['dense'] / 1e6:.2f}", "0%"]
        cells += [f"{dense['eval']['perplexity'][s]['ppl']:.2f}" for s in ppl_sources]
        zs = dense["eval"].get("zero_shot")
        if tasks:
            cells.append(f"{100 * zs['mean']:.2f}" if zs else "–")
            cells += [f"{100 * zs['tasks'][t]['headline']:.1f}" if zs else "–" for t in tasks]
        cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        if row["ratio"] != ratio:
            continue
        name = row["label"] if row["kind"] == "main" else f"*{row['label']}*"
        cells = [name, ",".join(map(str, row["seeds"])), f"{row['params']['mean'] / 1e6:.2f}"]
        cells.append(f"{100 * row['realised_ratio']['mean']:.2f}%")
        cells += [_fmt(row["ppl"].get(s)) for s in ppl_sources]
        if tasks:
            acc = _fmt(row["acc"], 2, 100)
            if row["acc"] and row["acc"]["n"] < len(row["seeds"]):
                acc += f" (seed {','.join(map(str, row['acc_seeds']))})"
            cells.append(acc)
            cells += [_fmt(row["tasks"].get(t), 1, 100) for t in tasks]
        rss = _fmt(row["rss_peak_mib"], 0)
        if row["rss_increase_mib"]:
            rss += f" (+{row['rss_increase_mib']['mean']:.0f})"
        prune_s = f"{min(row['prune_s']['values']):.1f}" if row["prune_s"] else "–"
        cells += [prune_s, rss]
        lines.append("| " + " | ".join(cells) + " |")
    stderr = [r["acc_stderr"] for r in rows if r["ratio"] == ratio and r["acc_stderr"]]
    lines.append("")
    if stderr:
        lines.append(
            f"Standard error of one average accuracy from the document subsets ≈ {100 * statistics.fmean(stderr):.2f} "
            "points (lm-eval's per-task standard errors combined). Ablation rows in italics."
        )
        lines.append("")
    return lines


def _standings_text(standings: list[dict]) -> list[str]:
    lines = ["## Where SlimLLM stands", ""]
    for ratio in sorted({s["ratio"] for s in standings}):
        items = [s for s in standings if s["ratio"] == ratio]
        behind = [s for s in items if not s["ahead"] and not s["tied"]]
        ahead_all = not behind and not any(s["tied"] for s in items)
        lines.append(
            f"**{_pct(ratio)}**: SlimLLM is "
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


def _ablation_table(ablations: list[dict], ppl_sources: list[str], speed_measured: bool) -> list[str]:
    header = ["ratio", "variant"]
    for s in ppl_sources:
        header += [f"{PPL_LABELS.get(s, s)} PPL", "Δ"]
    header += ["avg acc %", "Δ"]
    lines = ["## What each ablation costs (same calibration seed as the full method)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in ablations:
        cells = [_pct(a["ratio"]), a["label"]]
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
            f"| {_pct(entry['ratio'])} | {', '.join(entry['labels'])} | {entry['params'] / 1e6:.2f} "
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


# -- plots -----------------------------------------------------------------------------------------
def _code_versions(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        sha = (record.get("code") or {}).get("src_sha256") or "not recorded"
        counts[sha] = counts.get(sha, 0) + 1
    return counts


def plot_all(results: dict, records: list[dict], out: Path) -> dict[str, str]:
    """Write the PNG plots that the data allows; returns {name: file name}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return {}
    written = {}
    first_seed = results["settings"].get("seeds_run", [None])[0]
    slim = sorted(
        (r for r in records if r["label"] == "slimllm" and r.get("layers") and r["seed"] == first_seed),
        key=lambda r: r["ratio"],
    )
    if slim:
        fig, ax = plt.subplots(figsize=(9, 5))
        layers = [row["layer"] for row in slim[0]["layers"]]
        cos = [row["cosine"] for row in slim[0]["layers"]]
        ax.plot(layers, cos, "k-o", markersize=3, label="input/output cosine (dense)")
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine similarity")
        ax2 = ax.twinx()
        width = 0.8 / max(1, len(slim))
        for i, record in enumerate(slim):
            xs = [x + (i - (len(slim) - 1) / 2) * width for x in layers]
            ax2.bar(
                xs,
                [row["ratio"] for row in record["layers"]],
                width,
                alpha=0.5,
                label=f"SlimLLM ratio, {_pct(record['ratio'])}",
            )
        for record in sorted(
            (r for r in records if r["label"] == "flap" and r.get("layers") and r["seed"] == first_seed),
            key=lambda r: r["ratio"],
        ):
            ax2.step(
                layers,
                [row["realised_ratio"] for row in record["layers"]],
                where="mid",
                linestyle="--",
                label=f"FLAP layer ratio, {_pct(record['ratio'])}",
            )
        ax2.set_ylabel("pruning ratio of the layer")
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(
            handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7,
            loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
        )  # fmt: skip
        ax.set_title(f"{results['model']}: layer cosine and allocated ratio")
        fig.tight_layout()
        fig.savefig(out / PLOTS["layers"], dpi=110)
        plt.close(fig)
        written["layers"] = PLOTS["layers"]

    rows = results["rows"]
    dense = results["dense"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ppl_sources = [s for s in results["settings"]["ppl"] if any(s in r["ppl"] for r in rows)]
    if rows and ppl_sources:
        fig, axes = plt.subplots(1, len(ppl_sources), figsize=(5.2 * len(ppl_sources), 4), squeeze=False)
        for ax, source in zip(axes[0], ppl_sources, strict=True):
            for label in labels:
                pts = sorted(
                    (r["ratio"], r["ppl"].get(source)) for r in rows if r["label"] == label and r["ppl"].get(source)
                )
                if not pts:
                    continue
                if dense:  # every line starts from the dense model at 0%
                    pts.insert(0, (0.0, {"mean": dense["eval"]["perplexity"][source]["ppl"], "std": None}))
                kind = next(r["kind"] for r in rows if r["label"] == label)
                style = "-o" if kind == "main" else ":x"
                ax.errorbar(
                    [p[0] * 100 for p in pts], [p[1]["mean"] for p in pts],
                    yerr=[p[1]["std"] or 0 for p in pts], fmt=style, capsize=3, label=label, markersize=4,
                )  # fmt: skip
            if dense:
                ax.axhline(dense["eval"]["perplexity"][source]["ppl"], color="gray", linestyle="--", label="dense")
            ax.set_yscale("log")
            ax.set_xlabel("parameters removed (%)")
            ax.set_ylabel(f"{PPL_LABELS.get(source, source)} perplexity (log)")
            ax.set_title(PPL_LABELS.get(source, source))
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / PLOTS["perplexity"], dpi=110)
        plt.close(fig)
        written["perplexity"] = PLOTS["perplexity"]

    if any(r["acc"] for r in rows):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in labels:
            pts = sorted((r["ratio"], r["acc"]) for r in rows if r["label"] == label and r["acc"])
            if not pts:
                continue
            if dense and dense["eval"].get("zero_shot"):
                pts.insert(0, (0.0, {"mean": dense["eval"]["zero_shot"]["mean"], "std": None}))
            kind = next(r["kind"] for r in rows if r["label"] == label)
            ax.errorbar(
                [p[0] * 100 for p in pts], [100 * p[1]["mean"] for p in pts],
                yerr=[100 * (p[1]["std"] or 0) for p in pts], fmt="-o" if kind == "main" else ":x",
                capsize=3, label=label, markersize=4,
            )  # fmt: skip
        if dense and dense["eval"].get("zero_shot"):
            ax.axhline(100 * dense["eval"]["zero_shot"]["mean"], color="gray", linestyle="--", label="dense")
        tasks = results["settings"]["tasks"]
        if tasks:
            ax.axhline(100 * chance_of_mean(tasks), color="red", linestyle=":", label="chance")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("average zero-shot accuracy (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / PLOTS["accuracy"], dpi=110)
        plt.close(fig)
        written["accuracy"] = PLOTS["accuracy"]
    return written


# -- all outputs -----------------------------------------------------------------------------------
def write_outputs(spec, records: list[dict], *, out: Path, command, invocations: list[dict], skipped, machine) -> dict:
    """results.json (every number and setting), results.md (the tables) and the PNG plots."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dense = next((r for r in records if r["kind"] == "dense"), None)
    pruned = [r for r in records if r["kind"] != "dense"]
    if dense is not None:
        first_cal = next((r.get("calibration") for r in pruned if r.get("calibration")), None)
        dense = {**dense, "calibration": first_cal}
    rows = summarise(pruned)
    settings = {
        **spec.fingerprint(),
        "model": spec.model,
        "ratios": spec.ratios,
        "methods": spec.methods,
        "ablations": spec.ablations,
        "seeds": spec.seeds,
        "seeds_run": sorted({r["seed"] for r in pruned if r["seed"] is not None}, key=spec.seeds.index)
        if pruned
        else list(spec.seeds),
        "seed_eval": spec.seed_eval,
        "round_to": spec.round_to,
        "budget_minutes": spec.budget_minutes,
        "tasks_ordered": [t for t in TASKS if t in spec.tasks],
        "code_versions": _code_versions(records),
    }
    cell_wall = sum(sum((r.get("wall_s") or {}).values()) for r in records)
    results = {
        "model": spec.model,
        "command": command,
        "settings": settings,
        "machine": machine,
        "versions": pruned[0].get("versions") if pruned else None,
        "wall_s": {
            "invocations": sum(i["wall_s"] for i in invocations),
            "last_invocation": invocations[-1]["wall_s"] if invocations else None,
            "cells_total": cell_wall,
        },
        "invocations": invocations,
        "skipped": list(skipped),
        "dense": dense,
        "rows": rows,
        "standings": standings(rows),
        "ablations": ablation_costs(pruned, rows),
        "speed": speed_rows(rows, pruned),
        "cells": records,
    }
    results["plots"] = plot_all(results, pruned, out)
    write_record(out / RESULTS_JSON, results)
    (out / RESULTS_MD).write_text(markdown(results))
    return results
