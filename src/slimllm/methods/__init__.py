"""Pruning methods as plug-ins, one file each; ``--method NAME[@ALLOCATION]`` picks one.

Adding a method: a file here that scores heads and channels (maths in :mod:`slimllm.importance`)
and calls :func:`~slimllm.methods.base.register`; its import below makes ``--method``,
``slimllm bench`` and the help text know it.
"""

from __future__ import annotations

from collections.abc import Callable

from slimllm.allocation import eq11_allocator
from slimllm.config import PruneConfig
from slimllm.methods import flap, obs, simple, slimllm, taylor  # noqa: F401  (each registers its method, in this order)
from slimllm.methods.base import REGISTRY, Method, MethodSpec, NoRecovery, RegressionRecovery, register

ALLOCATIONS = ("uniform", "eq11", "flap", "search")
_ALLOCATION_ALIASES = {"slimllm": "eq11", "slimllm-ratios": "eq11"}


# The order of help texts and benchmark tables: SlimLLM, then the baselines from the simplest.
_LISTING_ORDER = ("slimllm", "obs", "magnitude", "wanda-sp", "flap", "taylor", "random")


def available_methods() -> list[str]:
    """Registered methods, in listing order; methods registered by other code come last."""
    return sorted(REGISTRY, key=lambda name: (_LISTING_ORDER.index(name) if name in _LISTING_ORDER else 99, name))


def method_help() -> str:
    return "; ".join(f"{name}: {REGISTRY[name].summary}" for name in available_methods())


def parse_method(name: str) -> tuple[str, str | None]:
    """``"wanda-sp@eq11"`` → ``("wanda-sp", "eq11")``; ``"flap"`` → ``("flap", None)``."""
    criterion, _, allocation = name.partition("@")
    if criterion not in REGISTRY:
        raise ValueError(
            f"unknown pruning method {name!r}; available: {', '.join(available_methods())} "
            f"(optionally NAME@ALLOCATION with ALLOCATION one of {', '.join(ALLOCATIONS)})"
        )
    if not allocation:
        return criterion, None
    allocation = _ALLOCATION_ALIASES.get(allocation, allocation)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r} in method {name!r}; use one of {', '.join(ALLOCATIONS)}")
    return criterion, allocation


def build_method(config: PruneConfig) -> Method:
    """The criteria, recovery and allocator for ``config.method``, with the ablation switches applied.

    ``config.method`` is ``NAME`` or ``NAME@ALLOCATION``: ALLOCATION one of ``uniform``, ``eq11``
    (alias ``slimllm``: SlimLLM's Eq. 11 ratios), ``flap`` (FLAP's adaptive structure) or
    ``search`` (Eq. 11's counts refined by the KL search of :mod:`slimllm.search`). Without
    a suffix each method uses the ratios it was published with; ``config.uniform`` forces
    ``uniform``.
    """
    name, allocation = parse_method(config.method)
    spec = REGISTRY[name]
    allocation = "uniform" if config.uniform else (allocation or spec.default_allocation)
    if config.only is not None and allocation in ("flap", "search"):
        raise ValueError(
            f"--only {config.only} works with the Eq. 11 or uniform layer ratios, not the {allocation} allocation "
            f"of {config.method!r} (which chooses heads and channels together); use NAME@slimllm or NAME@uniform"
        )
    criteria = spec.build(config)
    prepares = [criteria.prepare] if criteria.prepare is not None else []
    adds_bias = criteria.recovery.adds_bias
    if allocation == "flap":
        allocator = flap.FlapAllocation(gqa=config.gqa, adds_bias=adds_bias)
        prepares.append(allocator.prepare)
    else:
        allocator = eq11_allocator(uniform=allocation == "uniform", adds_bias=adds_bias)
    return Method(
        name=config.method,
        heads=criteria.heads,
        channels=criteria.channels,
        recovery=criteria.recovery,
        allocation=allocation,
        allocator=allocator,
        prepare=_chain(prepares),
        # the search keeps candidate layers and runs the head on every trial
        whole_model=spec.whole_model or allocation == "search",
    )


def _chain(prepares: list[Callable]) -> Callable | None:
    if not prepares:
        return None
    if len(prepares) == 1:
        return prepares[0]

    def prepare(*args):
        for hook in prepares:
            hook(*args)

    return prepare


__all__ = [
    "ALLOCATIONS",
    "Method",
    "MethodSpec",
    "NoRecovery",
    "RegressionRecovery",
    "available_methods",
    "build_method",
    "method_help",
    "parse_method",
    "register",
]
