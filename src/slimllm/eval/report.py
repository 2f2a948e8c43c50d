"""Side-by-side tables (terminal and Markdown) and JSON files for evaluation reports."""

from __future__ import annotations

import os
from pathlib import Path

from slimllm.eval.harness import METRICS
from slimllm.eval.task_table import HEADLINE_METRIC, TASKS, task_label
from slimllm.eval.uncertainty import mean_stderr
from slimllm.runtime import write_json_atomic

PPL_LABELS = {"wikitext2": "WikiText-2", "ptb": "PTB"}
HEADLINE_MARK = "*"
MAJORITY_LABEL = "majority answer"


def _format_parameters(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}K"


def _short_name(name: str) -> str:
    """A local path by its last component (prune output folders are named after the run)."""
    path = Path(name)
    return path.name if path.exists() and path.name else name


def column_labels(names: list[str]) -> list[str]:
    labels = [_short_name(name) for name in names]
    return labels if len(set(labels)) == len(labels) else names


def _ppl_label(source: str) -> str:
    return PPL_LABELS.get(source) or _short_name(source)


def _format_accuracy(value: float, stderr: float | None) -> str:
    # accuracies in percent, as the papers print them
    text = f"{100 * value:.2f}"
    return f"{text} ± {100 * stderr:.2f}" if stderr is not None else text


def _majority_rate(model: dict, task: str) -> float | None:
    majority = model["zero_shot"]["tasks"][task].get("majority")
    return majority["rate"] if majority else None


def _majority(model: dict, task: str) -> str:
    rate = _majority_rate(model, task)
    return f"{100 * rate:.2f}" if rate is not None else "-"


def _mean_majority(model: dict, tasks: list[str]) -> str:
    rates = [_majority_rate(model, task) for task in tasks]
    return f"{100 * sum(rates) / len(rates):.2f}" if None not in rates else "-"


def _mean_cell(zero_shot: dict) -> str:
    stderr = mean_stderr([task["headline_stderr"] for task in zero_shot["tasks"].values()])
    return _format_accuracy(zero_shot["mean"], stderr)


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header (metric, then one column per model) and rows of display strings."""
    models = report["models"]
    settings = report["settings"]
    header = ["metric", *column_labels([model["model"] for model in models])]
    rows = [["parameters", *(_format_parameters(model["parameters"]) for model in models)]]
    for source in report["data"]:
        if source == "tasks":
            continue
        label = f"{_ppl_label(source)} PPL (seqlen {settings['seqlen']})"
        rows.append([label, *(f"{model['perplexity'][source]['ppl']:.2f}" for model in models)])
    tasks = [task for task in TASKS if task in settings["tasks"]]
    for task in tasks:
        for metric in METRICS:
            cells = []
            for model in models:
                scores = model["zero_shot"]["tasks"][task]
                cells.append(_format_accuracy(scores[metric], scores[f"{metric}_stderr"]) if metric in scores else None)
            if all(cell is None for cell in cells):
                continue  # metric not defined by lm-eval for this task (acc_norm of BoolQ, WinoGrande)
            mark = HEADLINE_MARK if HEADLINE_METRIC[task] == metric else ""
            rows.append([f"{task_label(task)} {metric}{mark}", *(cell or "-" for cell in cells)])
        rows.append([f"{task_label(task)} {MAJORITY_LABEL}", *(_majority(model, task) for model in models)])
    if tasks:
        label = f"mean of {len(tasks)} task{'s' if len(tasks) > 1 else ''} ({HEADLINE_MARK})"
        rows.append([label, *(_mean_cell(model["zero_shot"]) for model in models)])
        rows.append([f"mean of {MAJORITY_LABEL}s", *(_mean_majority(model, tasks) for model in models)])
    rows.append(["wall time (s)", *(f"{model['load_s'] + model['wall_s']:.0f}" for model in models)])
    return header, rows


def notes(report: dict) -> list[str]:
    """Lines that say how to read the table: subsets, metrics, data."""
    settings = report["settings"]
    lines = []
    if settings["tasks"]:
        if settings["task_limit"]:
            subset = f"seeded random subsets of {settings['task_limit']} documents per task (seed {settings['seed']})"
        else:
            subset = "all documents"
        lines.append(
            f"Zero-shot: lm-eval {settings['versions']['lm_eval']}, 0-shot, {subset}, "
            f"data from {settings['task_source']}; accuracies in %, ± standard error; "
            f"{HEADLINE_MARK} the metric the papers report; the mean's ± is sqrt(Σ s.e.²) / tasks. "
            f"'{MAJORITY_LABEL}': the score of always giving the task's most frequent right answer on the same "
            "documents (a model at or below it is at chance on that task)."
        )
    if any(source != "tasks" for source in report["data"]):
        windows = f"first {settings['ppl_limit']} windows" if settings["ppl_limit"] else "all windows"
        bos = ", each after a <bos> token" if settings.get("bos") else ""
        lines.append(f"Perplexity: non-overlapping {settings['seqlen']}-token windows, {windows}{bos}.")
    return lines


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(*header, title="slimllm eval")
    for column in table.columns:
        column.overflow = "fold"  # long model paths wrap instead of being cut to "…"
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*row)
    console = console or Console()
    console.print(table)
    for line in notes(report):
        console.print(line, style="dim")


def markdown_table(report: dict) -> str:
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """A results page: the command that produced it, its wall time, the table and how to read it."""
    parts = ["# slimllm eval", ""]
    if report.get("command"):
        parts += ["```", report["command"], "```", ""]
    parts += [f"Wall time: {report['wall_s']:.0f} s ({report['wall_s'] / 60:.1f} min)", ""]
    if report.get("machine"):
        parts += [f"Machine: {report['machine']}", ""]
    parts += [markdown_table(report), ""]
    parts += [f"- {line}" for line in notes(report)]
    for source, info in report["data"].items():
        if source != "tasks":
            parts.append(f"- {source}: {info['origin']} (sha256 {info['sha256'][:16]}…)")
    return "\n".join(parts) + "\n"


def write_json(report: dict, path: str | os.PathLike) -> Path:
    return write_json_atomic(path, report, default=None)
