"""slimllm: structured pruning of LLaMA-family models with SlimLLM.

    import slimllm
    model, tokenizer = slimllm.load("smollm2-135m")
    pruned, plan = slimllm.prune(model, tokenizer, slimllm.PruneConfig(ratio=0.2))
    slimllm.save(pruned, tokenizer, plan, "out/smollm2-20")

Importing slimllm registers the pruned-model class with the transformers Auto classes, so
``AutoModelForCausalLM.from_pretrained`` loads folders written by :func:`save`.
"""

from slimllm.config import ConfigError, PruneConfig
from slimllm.io import load, save
from slimllm.modeling import SlimLlamaConfig, SlimLlamaForCausalLM
from slimllm.plan import PrunePlan
from slimllm.prune import prune
from slimllm.surgery import apply_plan

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "PruneConfig",
    "PrunePlan",
    "SlimLlamaConfig",
    "SlimLlamaForCausalLM",
    "__version__",
    "apply_plan",
    "load",
    "prune",
    "save",
]
