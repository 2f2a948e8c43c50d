"""What a benchmark run measures: its settings (:class:`BenchSpec`) and its cells (:class:`Cell`).

A cell is one pruned model: a row label (method or ablation), a target ratio and a calibration
seed. Cells are independent and resumable: each one's numbers go to ``cells/KEY.json``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from slimllm.config import PRESETS
from slimllm.eval.settings import EvalSettings
from slimllm.eval.task_table import TASKS
from slimllm.methods import REGISTRY, available_methods

# SlimLLM's ablations (docs/method.md, the paper's Table 5) as PruneConfig overrides.
ABLATIONS: dict[str, dict] = {
    "no-greedy": {"greedy": False},
    "no-feature-space": {"feature_space": False},
    "no-regression": {"regression": False},
    "uniform": {"uniform": True},
    "keep-lowest-0": {"keep_lowest": 0.0},
}
ABLATION_FLAGS = {
    "no-greedy": "--no-greedy",
    "no-feature-space": "--no-feature-space",
    "no-regression": "--no-regression",
    "uniform": "--uniform",
    "keep-lowest-0": "--keep-lowest 0",
}
# Options beyond the paper, each an extra SlimLLM row against the paper-faithful default.
SEARCH_STEPS = 40  # a fixed number of candidates: the same model on any machine
OPTIONS: dict[str, dict] = {
    "ridge": {"recovery": "ridge"},
    "ridge-dense": {"recovery": "ridge-dense"},
    "ridge-layer": {"recovery": "ridge-layer"},
    "obs-ridge": {"method": "obs", "recovery": "ridge"},
    "calib-128x512": {"nsamples": 128, "seqlen": 512},
    "ridge-128x512": {"recovery": "ridge", "nsamples": 128, "seqlen": 512},
    "search": {"method": "slimllm@search", "search_steps": SEARCH_STEPS},
    "search-ridge": {
        "method": "slimllm@search",
        "recovery": "ridge",
        "search_steps": SEARCH_STEPS,
        "search_minutes": 8.0,
    },
    "best": PRESETS["best"],
}
OPTION_FLAGS = {
    "ridge": "--recovery ridge",
    "ridge-dense": "--recovery ridge-dense",
    "ridge-layer": "--recovery ridge-layer",
    "obs-ridge": "--method obs --recovery ridge",
    "calib-128x512": "--nsamples 128 --seqlen 512",
    "ridge-128x512": "--recovery ridge --nsamples 128 --seqlen 512",
    "search": f"@search --search-steps {SEARCH_STEPS}",
    "search-ridge": f"@search --recovery ridge --search-steps {SEARCH_STEPS}",
    "best": "--preset best",
}


def option_label(name: str) -> str:
    """The row of an option: ``slimllm --recovery ridge``, ``slimllm@search``."""
    flags = OPTION_FLAGS[name]
    return f"slimllm{flags}" if flags.startswith("@") else f"slimllm {flags}"


DEFAULT_SEEDS = (42, 43, 44)  # calibration seeds of the main rows


def options_help() -> str:
    """Every option row and the flags it stands for, for ``--options``'s help."""
    return ", ".join(f"{name} ({OPTION_FLAGS[name]})" for name in OPTIONS)


# Every registered method of the paper or a baseline, in listing order (not the beyond-paper ones: options).
DEFAULT_METHODS = tuple(name for name in available_methods() if not REGISTRY[name].beyond_paper)


@dataclass(frozen=True)
class Cell:
    """One (row, ratio, seed) of the benchmark."""

    label: str  # the row: a method name, "slimllm --no-greedy", "slimllm --round-to 8", or "dense"
    kind: str  # dense | main | ablation | option | round_to
    ratio: float | None = None
    seed: int | None = None
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    zero_shot: bool = True  # run the zero-shot tasks (perplexity always runs)
    speed: bool = True  # measure speed unless a finished cell of the same shapes already did

    @property
    def key(self) -> str:
        if self.kind == "dense":
            return "dense"
        name = re.sub(r"\s+-+", "_", self.label).replace("@", "-at-")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
        return f"{name}__r{self.ratio:g}__s{self.seed}"


@dataclass
class BenchSpec:
    """Every setting of a ``slimllm bench`` run; everything but the cell list, the output folder
    and the time budget must match for a finished cell to be reused."""

    model: str
    out: str
    ratios: list[float] = field(default_factory=lambda: [0.2, 0.5])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    ablations: bool = False
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    seed_eval: str = "all"  # for seeds after the first: "all" (ppl + zero-shot) or "ppl"
    round_to: list[int] = field(default_factory=list)  # extra "slimllm --round-to N" rows
    options: list[str] = field(default_factory=list)  # extra rows beyond the paper (OPTIONS)
    # evaluation
    ppl: list[str] = field(default_factory=lambda: ["wikitext2", "ptb"])
    seqlen: int = 128
    ppl_limit: int | None = None
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    task_limit: int | None = None
    task_seed: int = 0
    task_source: str = "auto"
    eval_batch_size: int = 8
    # pruning
    calib: str = "bookcorpus"
    nsamples: int = 32
    calib_seqlen: int = 128
    batch_size: int = 8
    gqa: str = "query"
    # speed
    speed: bool = True
    speed_runs: int = 3
    prefill_tokens: int = 512
    decode_tokens: int = 128
    decode_prompt: int = 128
    # machine
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    budget_minutes: float | None = None

    def validate(self) -> None:
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise ValueError(f"ratios must lie in (0, 1), got {self.ratios}")
        if not self.methods and not self.ablations and not self.round_to and not self.options:
            raise ValueError("nothing to benchmark: give --methods, --ablations, --options or --round-to")
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; known: {', '.join(OPTIONS)}")
        if not self.seeds:
            raise ValueError("need at least one calibration seed")
        if self.seed_eval not in ("all", "ppl"):
            raise ValueError(f"seed_eval must be 'all' or 'ppl', got {self.seed_eval!r}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a method is listed twice: {self.methods}")
        from slimllm.methods import parse_method

        for method in self.methods:
            parse_method(method)
        if self.speed_runs < 1 or self.prefill_tokens < 1 or self.decode_tokens < 1 or self.decode_prompt < 1:
            raise ValueError("speed runs and token counts must be positive")

    def fingerprint(self) -> dict:
        """The settings that decide a cell's numbers (a finished cell is reused only if equal)."""
        data = asdict(self)
        cell_list = ("ratios", "methods", "ablations", "options", "seeds", "seed_eval", "round_to")
        for name in ("out", "budget_minutes", *cell_list):
            data.pop(name)
        data["speed"] = {
            k: data.pop(k) for k in ("speed", "speed_runs", "prefill_tokens", "decode_tokens", "decode_prompt")
        }
        return data

    def eval_settings(self) -> EvalSettings:
        """How every cell is evaluated (the same for the dense model and every pruned one)."""
        return EvalSettings(
            ppl=tuple(self.ppl),
            tasks=tuple(self.tasks),
            seqlen=self.seqlen,
            ppl_limit=self.ppl_limit,
            task_limit=self.task_limit,
            seed=self.task_seed,
            batch_size=self.eval_batch_size,
            task_source=self.task_source,
            device=self.device,
            dtype=self.dtype,
        )

    def prune_overrides(self) -> dict:
        return {
            "calib": self.calib,
            "nsamples": self.nsamples,
            "seqlen": self.calib_seqlen,
            "batch_size": self.batch_size,
            "gqa": self.gqa,
            "device": self.device,
            "dtype": self.dtype,
        }

    def cells(self) -> list[Cell]:
        """Dense first; then every cell of the first seed (main rows, ablations, round-to rows),
        ratio by ratio; then the main rows of the other seeds. An interrupted run thus has the
        complete single-seed table first."""
        first, *others = self.seeds
        cells = [Cell("dense", "dense")]
        for ratio in self.ratios:
            cells += [Cell(m, "main", ratio, first, {"method": m}) for m in self.methods]
            if self.ablations:
                cells += [
                    Cell(
                        f"slimllm {ABLATION_FLAGS[name]}",
                        "ablation",
                        ratio,
                        first,
                        {"method": "slimllm", **o},
                        speed=False,
                    )
                    for name, o in ABLATIONS.items()
                ]
            cells += [
                Cell(option_label(name), "option", ratio, first, {"method": "slimllm", **OPTIONS[name]})
                for name in self.options
            ]
            cells += [
                Cell(f"slimllm --round-to {n}", "round_to", ratio, first, {"method": "slimllm", "round_to": n})
                for n in self.round_to
            ]
        for seed in others:
            for ratio in self.ratios:
                cells += [
                    Cell(m, "main", ratio, seed, {"method": m}, zero_shot=self.seed_eval == "all", speed=False)
                    for m in self.methods
                ]
        return cells
