"""PruneConfig: every setting of a pruning run, validated, with a JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

GQA_MODES = ("query", "group")
RATIO_OF = ("all", "decoder")


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
    ``method`` picks the importance criterion (``slimllm`` or a baseline) and, after ``@``, the
    layer allocation; ``uniform`` (one ratio in every layer) is one of the paper's ablations.
    The fields here are read by every run. ``options`` holds what the chosen method and allocation
    alone read (``{"alpha": 7, "recovery": "ridge"}``): each declares an options dataclass with
    the defaults (:class:`slimllm.methods.MethodSpec`, :class:`slimllm.methods.AllocationSpec`),
    and an option that neither reads is refused when the method is built.
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
    gqa: str = field(
        default="query", metadata={"help": "prune single query heads or whole key/value groups", "choices": GQA_MODES}
    )
    uniform: bool = field(default=False, metadata={"help": "ablation: one ratio in every layer"})
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
    options: dict = field(
        default_factory=dict,
        metadata={
            "help": "the chosen method's and allocation's own options, by name (alpha, recovery, ...): "
            "each plug-in's options dataclass holds their defaults and refuses a name it does not read"
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0.0 < float(self.ratio) < 1.0:
            raise ConfigError(f"ratio must lie strictly between 0 and 1, got {self.ratio!r}")
        if self.ratio_of not in RATIO_OF:
            raise ConfigError(f"ratio_of must be one of {RATIO_OF}, got {self.ratio_of!r}")
        if self.gqa not in GQA_MODES:
            raise ConfigError(f"gqa must be one of {GQA_MODES}, got {self.gqa!r}")
        if self.nsamples < 1 or self.seqlen < 2:
            raise ConfigError(f"need nsamples >= 1 and seqlen >= 2, got {self.nsamples} and {self.seqlen}")
        if self.cache_gb < 0:
            raise ConfigError(f"cache_gb must be at least 0, got {self.cache_gb}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not isinstance(self.options, dict) or not all(isinstance(name, str) for name in self.options):
            raise ConfigError(f"options must be a dict of option names to values, got {self.options!r}")

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
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> PruneConfig:
        """A config from its :meth:`to_dict` form or a flat one (``{"ratio": 0.2, "alpha": 7}``, as
        presets, bench rows and records written before plug-in options had their own dataclasses):
        a name that is no field of every run is a plug-in option (checked against the plug-ins
        when the method is built)."""
        shared = {f.name for f in fields(cls)} - {"options"}
        options = dict(data.get("options") or {})
        options.update({name: value for name, value in data.items() if name not in shared and name != "options"})
        return cls(**{name: value for name, value in data.items() if name in shared}, options=options)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PruneConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
