"""LoRA recovery of pruned models (the paper's "w/ tune" rows), built on peft and the transformers Trainer.

    from slimllm.finetune import FinetuneConfig, finetune
    finetune("out/smollm2-20", "lambada", "out/smollm2-20-tuned", FinetuneConfig(max_steps=300))

The pieces are usable alone: :func:`prepare_data` (tokenised, prompt-masked, split),
:func:`attach_lora`, :func:`build_trainer`, :func:`merge_lora`.
"""

from slimllm.finetune.config import LORA_TARGETS, FinetuneConfig
from slimllm.finetune.data import ALPACA_TEMPLATE, DataFormatError, FinetuneData, prepare_data
from slimllm.finetune.lora import attach_lora, lora_target_names, merge_lora
from slimllm.finetune.run import FINETUNE_LOG, finetune
from slimllm.finetune.trainer import build_trainer

__all__ = [
    "ALPACA_TEMPLATE",
    "FINETUNE_LOG",
    "LORA_TARGETS",
    "DataFormatError",
    "FinetuneConfig",
    "FinetuneData",
    "attach_lora",
    "build_trainer",
    "finetune",
    "lora_target_names",
    "merge_lora",
    "prepare_data",
]
