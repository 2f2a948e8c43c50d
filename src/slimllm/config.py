"""PruneConfig: every setting of a pruning run, validated, with a JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

GQA_MODES = ("query", "group")
RATIO_OF = ("all", "decoder")


class ConfigError(ValueError):
    """A setting is out of range or inconsistent."""


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

    ratio: float = 0.2
    ratio_of: str = "all"
    method: str = "slimllm"
    calib: str = "bookcorpus"
    nsamples: int = 32
    seqlen: int = 128
    seed: int = 42
    alpha: float | None = None
    layers: int | None = None
    max_layer_ratio: float = 0.9
    gqa: str = "query"
    greedy: bool = True
    feature_space: bool = True
    regression: bool = True
    uniform: bool = False
    keep_lowest: float = 0.01
    round_to: int = 1
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None

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
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1), got {self.max_layer_ratio}")
        if not 0.0 <= self.keep_lowest < 0.5:
            raise ConfigError(f"keep_lowest must lie in [0, 0.5), got {self.keep_lowest}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers (L_p) must be at least 1, got {self.layers}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be at least 1, got {self.round_to}")
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
