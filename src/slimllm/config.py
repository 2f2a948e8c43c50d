"""PruneConfig: every setting of a pruning run, validated, with a JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

GQA_MODES = ("query", "group")
RATIO_OF = ("all", "decoder")
PRUNED_PARTS = ("attention", "ffn")
# Read by every run, whatever the method: the data, the target, the machinery. Every other field
# belongs to a plug-in (a method, its allocation or its recovery) that declares it; set away from
# its default for a plug-in that does not read it, it is refused (slimllm.methods.check_options).
SHARED_FIELDS = frozenset(
    {"ratio", "ratio_of", "method", "calib", "nsamples", "seqlen", "seed", "gqa", "uniform", "batch_size", "device",
     "dtype", "cache_gb", "threads"}
)  # fmt: skip


class ConfigError(ValueError):
    """A setting is out of range or inconsistent."""


# Named sets of settings (``--preset``, :meth:`PruneConfig.from_preset`): "paper" is the default,
# the paper's method; "best" is what measured better on held-out calibration text and on the
# benchmarks in docs/usage.md ("Beyond the paper").
PRESETS: dict[str, dict] = {
    "paper": {},
    # The ridge refit fits whole matrices and keeps improving with calibration tokens where the
    # paper's per-column fit does not; aiming down_proj at the dense layer's output (ridge-layer)
    # also makes up for the attention's loss. 128 x 512 tokens prune SmolLM2-135M in about 9
    # minutes on a 2-core CPU. With that much calibration the allocation search added nothing.
    "best": {"recovery": "ridge-layer", "nsamples": 128, "seqlen": 512},
}


@dataclass
class PruneConfig:
    """Settings of one SlimLLM run; defaults follow the paper and the authors' code.

    ``ratio`` is the fraction of parameters to remove: of *all* of them (embeddings included, as
    the paper counts) or, with ``ratio_of="decoder"``, of the decoder layers' alone (for models
    such as Gemma 3 whose embeddings hold most of the parameters).
    ``layers`` (L_p) and ``alpha`` default to the paper's settings interpolated for ``ratio``
    (``None`` means "derive"). ``method`` picks the importance criterion (``slimllm`` or a
    baseline); the ``greedy``/``feature_space``/``regression``/``uniform`` switches are the
    ablations of the paper.
    """

    ratio: float = field(
        default=0.2, metadata={"help": "fraction of parameters to remove, in (0, 1)", "required": True}
    )
    ratio_of: str = field(
        default="all",
        metadata={
            "help": "count the ratio against all parameters (the paper) or the decoder layers'",
            "choices": RATIO_OF,
        },
    )
    method: str = field(default="slimllm", metadata={"help": "the pruning method, NAME or NAME@ALLOCATION (see below)"})
    calib: str = field(
        default="bookcorpus", metadata={"help": "bookcorpus | lambada | FILE.txt | FILE.jsonl | hf:NAME[:CONFIG]"}
    )
    nsamples: int = field(default=32, metadata={"help": "calibration windows"})
    seqlen: int = field(default=128, metadata={"help": "tokens per calibration window"})
    seed: int = field(default=42, metadata={"help": "seed of the calibration windows (and of random scores)"})
    alpha: float | None = field(
        default=None,
        metadata={"help": "Eq. 11 temperature; None: the paper's (10 at 20%%, 7 at 50%%)", "type": float},
    )
    layers: int | None = field(
        default=None, metadata={"help": "number of layers pruned, L_p; None: the paper's share", "type": int}
    )
    max_layer_ratio: float = field(default=0.9, metadata={"help": "cap on any layer's ratio"})
    gqa: str = field(
        default="query", metadata={"help": "prune single query heads or whole key/value groups", "choices": GQA_MODES}
    )
    greedy: bool = field(default=True, metadata={"help": "ablation: no greedy head search (Algorithm 1)"})
    feature_space: bool = field(default=True, metadata={"help": "ablation: channel norms in the original basis"})
    regression: bool = field(default=True, metadata={"help": "ablation: no output regression"})
    recovery: str = field(
        default="regression",
        metadata={"help": "how the pruned output projections are refitted (see below)"},
    )
    uniform: bool = field(default=False, metadata={"help": "ablation: one ratio in every layer"})
    only: str | None = field(
        default=None,
        metadata={
            "help": "prune only the attention heads or only the FFN channels, the whole target taken from "
            "that part (with the Eq. 11 or uniform layer ratios); None: both",
            "choices": PRUNED_PARTS,
        },
    )
    search_minutes: float = field(
        default=5.0,
        metadata={"help": "time budget of the allocation search (NAME@search), in minutes"},
    )
    search_steps: int | None = field(
        default=None,
        metadata={"help": "stop the allocation search after N candidates (None: at the time budget)", "type": int},
    )
    keep_lowest: float = field(default=0.01, metadata={"help": "spare the lowest FRACTION of channels (code quirk)"})
    round_to: int = field(default=1, metadata={"help": "keep FFN widths multiples of N"})
    tensor_parallel: int = field(
        default=1,
        metadata={
            "help": "keep every layer's heads, key/value heads and FFN width multiples of N, so vLLM's "
            "--tensor-parallel-size N splits each layer (needs --gqa group)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "calibration windows per forward pass"})
    device: str | None = field(
        default=None, metadata={"help": "compute device of the current layer (e.g. cuda); None: the model's"}
    )
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16; None: float32"})
    cache_gb: float = field(
        default=4.0,
        metadata={"help": "GiB for one layer's kept activations (replayed, not recomputed); 0: recompute"},
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads; None: one per core not busy with other work", "type": int}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0.0 < float(self.ratio) < 1.0:
            raise ConfigError(f"ratio must lie strictly between 0 and 1, got {self.ratio!r}")
        if self.ratio_of not in RATIO_OF:
            raise ConfigError(f"ratio_of must be one of {RATIO_OF}, got {self.ratio_of!r}")
        if self.only is not None and self.only not in PRUNED_PARTS:
            raise ConfigError(f"only must be one of {PRUNED_PARTS} or None, got {self.only!r}")
        if self.gqa not in GQA_MODES:
            raise ConfigError(f"gqa must be one of {GQA_MODES}, got {self.gqa!r}")
        if self.nsamples < 1 or self.seqlen < 2:
            raise ConfigError(f"need nsamples >= 1 and seqlen >= 2, got {self.nsamples} and {self.seqlen}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1), got {self.max_layer_ratio}")
        if not 0.0 <= self.keep_lowest < 0.5:
            raise ConfigError(f"keep_lowest must lie in [0, 0.5), got {self.keep_lowest}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers (L_p) must be at least 1, got {self.layers}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be at least 1, got {self.round_to}")
        if self.tensor_parallel < 1:
            raise ConfigError(f"tensor_parallel must be at least 1, got {self.tensor_parallel}")
        if self.tensor_parallel > 1 and self.gqa != "group":
            raise ConfigError(
                "tensor_parallel needs gqa='group' (--gqa group): vLLM splits a layer's key/value heads over the "
                "GPUs with the query heads each serves, so whole groups must go"
            )
        if self.cache_gb < 0:
            raise ConfigError(f"cache_gb must be at least 0, got {self.cache_gb}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not self.search_minutes > 0:
            raise ConfigError(f"search_minutes must be positive, got {self.search_minutes}")
        if self.search_steps is not None and self.search_steps < 1:
            raise ConfigError(f"search_steps must be at least 1, got {self.search_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_preset(cls, name: str, **overrides) -> PruneConfig:
        """The settings of preset ``name`` (:data:`PRESETS`), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown PruneConfig fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PruneConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
