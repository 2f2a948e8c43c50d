"""Recovery by distillation: a pruned student trained on its dense teacher's next-token distributions.

    from slimllm.distill import DistillConfig, distill
    distill("out/smollm2-20", "smollm2-135m", "lambada", "out/smollm2-20-distilled", DistillConfig(max_tokens=200_000))

The maths is in :mod:`slimllm.distill.loss`, the teacher's two forms (resident, or top-k cached on
disk) in :mod:`slimllm.distill.teacher`, the Trainer in :mod:`slimllm.distill.trainer`.
"""

from slimllm.distill.config import DistillConfig
from slimllm.distill.run import DISTILL_LOG, DISTILL_PLOT, distill

__all__ = ["DISTILL_LOG", "DISTILL_PLOT", "DistillConfig", "distill"]
