"""Gemma 2 and Gemma 3 (text): GeGLU, norms before and after attention and FFN, a query
pre-attention scalar, soft-capping (Gemma 2), sliding-window and global layers.

Nothing here needs more than the LLaMA names: the regression fits ``o_proj``/``down_proj``
outputs, which come before the post-norms, and every other Gemma detail lives in the stock
modules the pruned model is built from. The post-norms do mean that those outputs are not added
to the residual stream as they are, so ``--recovery ridge-dense`` refits them as ``ridge`` does.
"""

from __future__ import annotations

from slimllm.models.base import ModelAdapter

_GEMMA_REFUSAL = (
    "its norms after o_proj and down_proj, the scaled embeddings and GeGLU have no place in llama.cpp's "
    "deci layer nor in a stock LLaMA one"
)


class Gemma2Adapter(ModelAdapter):
    model_type = "gemma2"
    residual_outputs = False
    export_refusal = _GEMMA_REFUSAL + " (nor the logit soft-capping)"


class Gemma3TextAdapter(ModelAdapter):
    model_type = "gemma3_text"
    residual_outputs = False
    export_refusal = _GEMMA_REFUSAL + " (nor the q/k norms)"
