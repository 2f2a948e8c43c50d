"""results.json, results.md and the plots of a benchmark run, from its cell records.

The numbers are computed in :mod:`slimllm.bench.summary`, written as Markdown by
:mod:`slimllm.bench.markdown` and drawn by :mod:`slimllm.bench.plots`.
"""

from __future__ import annotations

from pathlib import Path

from slimllm.bench.files import RESULTS_JSON, RESULTS_MD, write_record
from slimllm.bench.markdown import markdown
from slimllm.bench.plots import plot_all
from slimllm.bench.summary import (
    ablation_costs,
    code_versions,
    paired_comparisons,
    speed_rows,
    standings,
    summarise,
)
from slimllm.eval.task_table import TASKS


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
    paired = paired_comparisons(records)
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
        "code_versions": code_versions(records),
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
        "standings": standings(rows, paired=paired),
        "paired": paired,
        "ablations": ablation_costs(pruned, rows),
        "speed": speed_rows(rows, pruned),
        "cells": records,
    }
    results["plots"] = plot_all(results, pruned, out)
    write_record(out / RESULTS_JSON, results)
    (out / RESULTS_MD).write_text(markdown(results))
    return results
