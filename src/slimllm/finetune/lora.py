"""LoRA adapters on the projections of pruned layers, and folding them back into the weights.

Pruned layers differ in width from one another, and the regression recovery gave ``o_proj`` and
``down_proj`` a bias. LoRA adds a low-rank term B·A beside each weight whatever its shape, and
with ``bias="none"`` the biases stay frozen and untouched, so merging leaves them exactly as the
pruning wrote them. Targets are passed to peft as full module names so that a projection pruned
to zero width (no weight to adapt) is simply skipped.
"""

from __future__ import annotations

from torch import nn

from slimllm.config import ConfigError
from slimllm.finetune.config import FinetuneConfig


def lora_target_names(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules whose own name is in ``targets`` and that have weights."""
    wanted = set(targets)
    found: set[str] = set()
    names = []
    linear_kinds: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        short = name.rsplit(".", 1)[-1]
        linear_kinds.add(short)
        if short in wanted:
            found.add(short)
            if module.weight.numel():
                names.append(name)
    missing = wanted - found
    if missing:
        raise ConfigError(
            f"LoRA targets {sorted(missing)} match no linear layer of this model; its linear layers are "
            f"{sorted(linear_kinds)}"
        )
    return names


def attach_lora(model: nn.Module, config: FinetuneConfig):
    """Wrap ``model`` in a peft model with trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_names(model, config.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def merge_lora(peft_model) -> nn.Module:
    """The base model with every adapter folded into its weight (W + (alpha / r)·B·A), adapters removed."""
    return peft_model.merge_and_unload()
