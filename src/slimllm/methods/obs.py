"""Beyond the paper: structured OBS selection (SlimGPT, ZipLM). Heads and channels go in the
greedy order of the least-squares error that remains after an optimal refit of ``o_proj`` /
``down_proj`` (maths in :mod:`slimllm.importance.obs`), so they pair with ``--recovery ridge``,
which performs that refit. Layer ratios are Eq. 11's, as SlimLLM's."""

from __future__ import annotations

from slimllm.importance.obs import ObsChannels, ObsHeads
from slimllm.methods.base import Criteria, MethodSpec, RecoveryOptions, configured_recovery, register


def _obs(config, options: RecoveryOptions) -> Criteria:
    return Criteria(ObsHeads(), ObsChannels(), configured_recovery(options))


register(
    MethodSpec(
        "obs",
        "structured OBS: greedy least-squares error after refit (pair with ridge)",
        "eq11",
        _obs,
        beyond_paper=True,
        options=RecoveryOptions,
    )
)
