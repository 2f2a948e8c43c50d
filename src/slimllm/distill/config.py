"""DistillConfig: the settings of a distillation run (the training settings of FinetuneConfig, the
objective, what trains, and the budget)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from slimllm.config import ConfigError
from slimllm.finetune.config import LORA, TRAINING, FinetuneConfig

DISTILLATION = "distillation"
BUDGET = "budget"
LR_SCHEDULES = ("linear", "cosine", "constant")
LORA_FIELDS = tuple(item.name for item in fields(FinetuneConfig) if item.metadata.get("group") == LORA)


@dataclass
class DistillConfig(FinetuneConfig):
    """A pruned student trained to match its dense teacher's next-token distributions.

    The loss is ``kl_weight``·τ²·KL(teacher‖student) + ``ce_weight``·(next-token loss) + ``hidden_weight``·(hidden-
    state distance); see :mod:`slimllm.distill.loss`. Every parameter trains unless ``lora`` (adapters
    only, merged at the end) or ``freeze_embeddings``. Training stops at the first budget reached:
    ``max_steps``, ``max_tokens`` (input tokens over all processes) or ``max_minutes`` of training;
    ``epochs`` when none is set. With a token budget and no step budget, the learning-rate schedule
    ends where the budget does. The held-out blocks' KL picks the checkpoint kept at the end.
    """

    temperature: float = field(
        default=1.0, metadata={"help": "softmax temperature τ of both models in the KL", "group": DISTILLATION}
    )
    kl_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of the KL to the teacher (0, with --ce-weight 1: plain fine-tuning)",
            "group": DISTILLATION,
        },
    )
    ce_weight: float = field(
        default=0.0, metadata={"help": "weight of the data's next-token loss added to the KL", "group": DISTILLATION}
    )
    hidden_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the per-layer hidden-state distance added to the KL", "group": DISTILLATION},
    )
    teacher_topk: int | None = field(
        default=None,
        metadata={
            "help": "None: the teacher runs beside the student; K: its top-K log-probabilities are computed once, "
            "cached on disk, and the teacher is not kept in memory",
            "group": DISTILLATION,
            "type": int,
        },
    )
    lora: bool = field(
        default=False, metadata={"help": "train LoRA adapters only (merged at the end), not every weight"}
    )
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "keep the input embeddings and output head fixed (less optimizer memory)"}
    )
    max_tokens: int | None = field(
        default=None, metadata={"help": "stop after this many training tokens", "group": BUDGET, "type": int}
    )
    max_minutes: float | None = field(
        default=None, metadata={"help": "stop after this much training time", "group": BUDGET, "type": float}
    )
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "learning-rate decay after the warm-up", "group": TRAINING, "choices": LR_SCHEDULES},
    )
    # FinetuneConfig's fields whose defaults differ for distillation (full-parameter training on text)
    epochs: float = field(default=1.0, metadata={"help": "passes over the training set", "group": TRAINING})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate", "group": TRAINING, "flag": "lr"})
    warmup_steps: int = field(default=20, metadata={"help": "linear learning-rate warm-up", "group": TRAINING})
    val_size: int = field(default=64, metadata={"help": "held-out blocks/examples (capped at 10%%)", "group": TRAINING})
    eval_steps: int = field(default=50, metadata={"help": "validate and checkpoint every N steps", "group": TRAINING})

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")
        for name in ("kl_weight", "ce_weight", "hidden_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.kl_weight + self.ce_weight + self.hidden_weight == 0:
            raise ConfigError("kl_weight, ce_weight and hidden_weight are all 0: nothing to train on")
        if self.teacher_topk is not None and self.teacher_topk < 1:
            raise ConfigError(f"teacher_topk must be at least 1, got {self.teacher_topk!r}")
        if self.teacher_topk is not None and self.hidden_weight > 0:
            raise ConfigError(
                "hidden_weight needs the teacher's hidden states, which a top-k cache does not keep: "
                "drop teacher_topk (--teacher-topk) or set hidden_weight to 0"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.lora:
            defaults = FinetuneConfig()
            changed = [name for name in LORA_FIELDS if getattr(self, name) != getattr(defaults, name)]
            if changed:
                flags = ", ".join("--" + name.replace("_", "-") for name in changed)
                raise ConfigError(f"{flags} only apply to LoRA training: add --lora, or drop them")
        if self.lora and self.freeze_embeddings:
            raise ConfigError("freeze_embeddings has no effect with lora (LoRA never trains the embeddings)")
