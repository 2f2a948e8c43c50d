"""FinetuneConfig: the settings of a LoRA recovery run; defaults are the paper's recipe (docs/method.md §7)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from slimllm.config import ConfigError
from slimllm.options import comma_list

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DATA_FORMATS = ("auto", "alpaca", "text")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# titles of the option groups in `slimllm finetune --help`
LORA = "LoRA"
TRAINING = "training"


@dataclass
class FinetuneConfig:
    """Settings that shape the training itself (a resumed run must use the same ones).

    ``batch_size`` is the effective batch (summed over devices and accumulation steps);
    ``micro_batch_size`` the per-device batch of one forward pass. ``max_steps`` (optimizer steps)
    overrides ``epochs`` when set. ``val_size`` examples (or text blocks) are held out, capped at
    10 % of the data; with none held out there is no best-checkpoint selection.
    """

    lora_r: int = field(default=4, metadata={"help": "adapter rank", "group": LORA})
    lora_alpha: int = field(default=16, metadata={"help": "adapter scale numerator (scale = alpha / r)", "group": LORA})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input", "group": LORA})
    lora_targets: tuple[str, ...] = field(
        default=LORA_TARGETS, metadata={"help": "comma-separated module names", "group": LORA, "parse": comma_list}
    )
    epochs: float = field(default=2.0, metadata={"help": "passes over the training set", "group": TRAINING})
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps; overrides --epochs", "group": TRAINING, "type": int}
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "peak learning rate (linear decay)", "group": TRAINING, "flag": "lr"}
    )
    batch_size: int = field(
        default=16, metadata={"help": "effective batch, over devices and accumulation", "group": TRAINING}
    )
    micro_batch_size: int = field(
        default=4, metadata={"help": "per-device batch of one forward pass", "group": TRAINING}
    )
    cutoff: int = field(default=256, metadata={"help": "max tokens per example; text block length", "group": TRAINING})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up", "group": TRAINING})
    train_on_prompt: bool = field(default=False, metadata={"help": "also learn the prompt tokens", "group": TRAINING})
    template: str = field(
        default="alpaca", metadata={"help": "alpaca, or a JSON file with prompt_input/no_input", "group": TRAINING}
    )
    data_format: str = field(
        default="auto",
        metadata={
            "help": "auto: plain text for text sources, .txt and {'text'} JSONL files; Alpaca otherwise",
            "flag": "format",
            "choices": DATA_FORMATS,
        },
    )
    val_size: int = field(
        default=2000, metadata={"help": "held-out examples/blocks (capped at 10%%)", "group": TRAINING}
    )
    eval_steps: int = field(default=200, metadata={"help": "validate and checkpoint every N steps", "group": TRAINING})
    best_by_validation: bool = field(
        default=True,
        metadata={
            "help": "end with the checkpoint of lowest validation loss",
            "group": TRAINING,
            "flag": "best",
            "negatable": True,
        },
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "checkpoints kept (the best is kept too)", "group": TRAINING}
    )
    logging_steps: int = field(default=1, metadata={"help": "log the training loss every N steps", "group": TRAINING})
    seed: int = field(default=42, metadata={"help": "adapter init, data split and order", "group": TRAINING})
    precision: str = field(
        default="auto",
        metadata={
            "help": "mixed precision; auto: bf16 (or fp16) on GPU, fp32 on CPU",
            "group": TRAINING,
            "choices": PRECISIONS,
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "less memory, more compute", "group": TRAINING}
    )

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.validate()

    def validate(self) -> None:
        positive = ("lora_r", "lora_alpha", "batch_size", "micro_batch_size", "eval_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_targets:
            raise ConfigError("lora_targets must name at least one module (e.g. q_proj)")
        if self.epochs <= 0 and self.max_steps is None:
            raise ConfigError(f"epochs must be positive, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.cutoff < 2:
            raise ConfigError(f"cutoff must be at least 2 tokens, got {self.cutoff!r}")
        if self.warmup_steps < 0 or self.val_size < 0:
            raise ConfigError("warmup_steps and val_size must not be negative")
        if self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be at least 1, got {self.save_total_limit!r}")
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format must be one of {DATA_FORMATS}, got {self.data_format!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Accumulation steps that make ``batch_size`` out of ``world_size`` devices × micro-batches."""
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size} × "
                f"{world_size} processes"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown finetune settings: {sorted(unknown)}")
        return cls(**data)
