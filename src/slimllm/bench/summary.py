"""The numbers of a benchmark run, from its cell records: rows (means over seeds), standings,
ablation costs, speed rows and paired accuracy differences."""

from __future__ import annotations

import math
import statistics

from slimllm.eval.uncertainty import mean_stderr, paired_difference


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


def accuracy_stderr(zero_shot: dict | None) -> float | None:
    """Standard error of the task average from lm-eval's per-task standard errors."""
    if not zero_shot:
        return None
    return mean_stderr([t.get("headline_stderr") for t in zero_shot["tasks"].values()])


def majority_rates(zero_shot: dict | None) -> dict[str, float]:
    """Per task, the accuracy of always giving the most frequent gold answer on the evaluated documents."""
    if not zero_shot:
        return {}
    return {t: v["majority"]["rate"] for t, v in zero_shot["tasks"].items() if v.get("majority")}


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
            "acc_stderr": accuracy_stderr(with_tasks[0]["eval"]["zero_shot"]) if with_tasks else None,
            "majority": majority_rates(with_tasks[0]["eval"]["zero_shot"]) if with_tasks else {},
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


def _seed_value(records: list[dict], ratio, label: str, seed) -> dict | None:
    return next((r for r in records if r["ratio"] == ratio and r["label"] == label and r["seed"] == seed), None)


def standings(rows: list[dict], reference: str = "slimllm", paired: list[dict] | None = None) -> list[dict]:
    """Where ``reference`` stands against every other main row, per ratio and metric.

    Accuracy is judged on the paired difference (same documents) where ``paired`` has it.
    """
    paired_errors = {(p["ratio"], p["reference"], p["baseline"]): p["stderr"] for p in paired or ()}
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
                paired_error = paired_errors.get((ref["ratio"], reference, other["label"]))
                if metric == "acc" and paired_error is not None:
                    noise = 2 * paired_error
                    noise_kind = "2 standard errors of the paired difference on the same documents"
                elif metric == "acc":
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
    """Each ablation and option against the full method on the same calibration seed."""
    out = []
    for row in rows:
        if row["kind"] not in ("ablation", "option", "round_to"):
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


def is_slimllm_row(label: str) -> bool:
    """SlimLLM itself and every variant of it (options, ablations, other allocations)."""
    return label.startswith("slimllm")


def _has_documents(record: dict) -> bool:
    zero_shot = record["eval"].get("zero_shot")
    return bool(zero_shot) and all(task.get("correct") for task in zero_shot["tasks"].values())


def paired_comparisons(records: list[dict]) -> list[dict]:
    """Accuracy of every SlimLLM row minus that of every baseline (and of the dense model), paired
    on the same documents and the same calibration seed (the first seed both evaluated).

    Pairing removes the documents' own difficulty from the comparison, so its standard error
    (from the per-document differences) is usually well below that of two independent means,
    which is reported beside it as ``unpaired_stderr``.
    """
    with_documents = [r for r in records if _has_documents(r)]
    dense = next((r for r in with_documents if r["kind"] == "dense"), None)
    out, seen = [], set()
    ordered = sorted(with_documents, key=lambda r: (r["ratio"] or 0, r["seed"] is None, r["seed"] or 0))
    for reference in ordered:
        if reference["kind"] == "dense" or not is_slimllm_row(reference["label"]):
            continue
        baselines = [
            r
            for r in ordered
            if r["kind"] == "main"
            and r["ratio"] == reference["ratio"]
            and r["seed"] == reference["seed"]
            and not is_slimllm_row(r["label"])
        ]
        for other in [*baselines, *([dense] if dense else [])]:
            key = (reference["ratio"], reference["label"], other["label"])
            if key in seen:
                continue  # a later seed of the same pair
            seen.add(key)
            a, b = reference["eval"]["zero_shot"], other["eval"]["zero_shot"]
            difference = paired_difference(a["tasks"], b["tasks"])
            if difference is None:
                continue
            errors = [accuracy_stderr(a), accuracy_stderr(b)]
            unpaired = math.sqrt(sum(e * e for e in errors)) if None not in errors else None
            out.append(
                {
                    "ratio": reference["ratio"],
                    "reference": reference["label"],
                    "baseline": other["label"],
                    "seed": reference["seed"],
                    **difference,
                    "unpaired_stderr": unpaired,
                }
            )
    return out


def code_versions(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        sha = (record.get("code") or {}).get("src_sha256") or "not recorded"
        counts[sha] = counts.get(sha, 0) + 1
    return counts
