"""The PNG plots of a benchmark run: per-layer allocation, perplexity and accuracy against the ratio."""

from __future__ import annotations

from pathlib import Path

from slimllm.bench.markdown import percent
from slimllm.eval.report import PPL_LABELS
from slimllm.eval.task_table import chance_of_mean

PLOTS = {"layers": "layers.png", "perplexity": "perplexity.png", "accuracy": "accuracy.png"}


def plot_all(results: dict, records: list[dict], out: Path) -> dict[str, str]:
    """Write the PNG plots that the data allows; returns {name: file name}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return {}
    written = {}
    for name, draw in (("layers", plot_layers), ("perplexity", plot_perplexity), ("accuracy", plot_accuracy)):
        fig = draw(plt, results, records)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(Path(out) / PLOTS[name], dpi=110)
        plt.close(fig)
        written[name] = PLOTS[name]
    return written


def _first_seed_records(results: dict, records: list[dict], label: str) -> list[dict]:
    first_seed = results["settings"].get("seeds_run", [None])[0]
    chosen = (r for r in records if r["label"] == label and r.get("layers") and r["seed"] == first_seed)
    return sorted(chosen, key=lambda r: r["ratio"])


def plot_layers(plt, results: dict, records: list[dict]):
    """The paper's Figure 2: dense layer cosines, SlimLLM's per-layer ratios (bars), FLAP's (steps)."""
    slim = _first_seed_records(results, records, "slimllm")
    if not slim:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    layers = [row["layer"] for row in slim[0]["layers"]]
    ax.plot(
        layers, [row["cosine"] for row in slim[0]["layers"]], "k-o", markersize=3, label="input/output cosine (dense)"
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ratios_axis = ax.twinx()
    width = 0.8 / len(slim)
    for i, record in enumerate(slim):
        xs = [x + (i - (len(slim) - 1) / 2) * width for x in layers]
        ratios = [row["ratio"] for row in record["layers"]]
        ratios_axis.bar(xs, ratios, width, alpha=0.5, label=f"SlimLLM ratio, {percent(record['ratio'])}")
    for record in _first_seed_records(results, records, "flap"):
        ratios = [row["realised_ratio"] for row in record["layers"]]
        label = f"FLAP layer ratio, {percent(record['ratio'])}"
        ratios_axis.step(layers, ratios, where="mid", linestyle="--", label=label)
    ratios_axis.set_ylabel("pruning ratio of the layer")
    (handles, labels), (more_handles, more_labels) = (a.get_legend_handles_labels() for a in (ax, ratios_axis))
    handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    ax.set_title(f"{results['model']}: layer cosine and allocated ratio")
    return fig


def _curve(ax, rows: list[dict], label: str, points: list[tuple], scale: float = 1.0) -> None:
    """One method's line through (ratio, {mean, std}) points, solid for main rows, dotted otherwise."""
    kind = next(r["kind"] for r in rows if r["label"] == label)
    ax.errorbar(
        [ratio * 100 for ratio, _ in points],
        [scale * value["mean"] for _, value in points],
        yerr=[scale * (value["std"] or 0) for _, value in points],
        fmt="-o" if kind == "main" else ":x",
        capsize=3,
        label=label,
        markersize=4,
    )


def _labels(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in rows))


def plot_perplexity(plt, results: dict, records: list[dict]):
    """Perplexity (log scale) against the ratio, one panel per text, every line starting at dense."""
    rows, dense = results["rows"], results["dense"]
    sources = [s for s in results["settings"]["ppl"] if any(s in r["ppl"] for r in rows)]
    if not rows or not sources:
        return None
    fig, axes = plt.subplots(1, len(sources), figsize=(5.2 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        dense_ppl = dense["eval"]["perplexity"][source]["ppl"] if dense else None
        for label in _labels(rows):
            points = sorted(
                (r["ratio"], r["ppl"][source]) for r in rows if r["label"] == label and r["ppl"].get(source)
            )
            if points:
                start = [(0.0, {"mean": dense_ppl, "std": None})] if dense else []
                _curve(ax, rows, label, start + points)
        if dense:
            ax.axhline(dense_ppl, color="gray", linestyle="--", label="dense")
        name = PPL_LABELS.get(source, source)
        ax.set(yscale="log", xlabel="parameters removed (%)", ylabel=f"{name} perplexity (log)", title=name)
    axes[0][0].legend(fontsize=7)
    return fig


def plot_accuracy(plt, results: dict, records: list[dict]):
    """Average zero-shot accuracy against the ratio, with the dense model and the chance level."""
    rows, dense = results["rows"], results["dense"]
    if not any(r["acc"] for r in rows):
        return None
    dense_zero_shot = dense["eval"].get("zero_shot") if dense else None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in _labels(rows):
        points = sorted((r["ratio"], r["acc"]) for r in rows if r["label"] == label and r["acc"])
        if points:
            start = [(0.0, {"mean": dense_zero_shot["mean"], "std": None})] if dense_zero_shot else []
            _curve(ax, rows, label, start + points, scale=100)
    if dense_zero_shot:
        ax.axhline(100 * dense_zero_shot["mean"], color="gray", linestyle="--", label="dense")
    tasks = results["settings"]["tasks"]
    if tasks:
        ax.axhline(100 * chance_of_mean(tasks), color="red", linestyle=":", label="chance")
    ax.set(xlabel="parameters removed (%)", ylabel="average zero-shot accuracy (%)")
    ax.legend(fontsize=7)
    return fig
