"""Pruning methods as plug-ins, one file each; ``--method NAME[@ALLOCATION]`` picks one.

Adding a method: a file here that scores heads and channels (maths in :mod:`slimllm.importance`)
and calls :func:`~slimllm.methods.base.register`; its import below makes ``--method``,
``slimllm bench`` and the help text know it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from slimllm.allocation import eq11_allocator
from slimllm.config import SHARED_FIELDS, ConfigError, PruneConfig
from slimllm.methods import flap, obs, simple, slimllm, taylor  # noqa: F401  (each registers its method, in this order)
from slimllm.methods.base import (
    RECOVERIES,
    REGISTRY,
    Method,
    MethodSpec,
    NoRecovery,
    RegressionRecovery,
    register,
)
from slimllm.registry import Registry


@dataclass(frozen=True)
class AllocationSpec:
    """A way to set the layer ratios (``--method NAME@ALLOCATION``) and the options it reads."""

    name: str
    summary: str
    options: tuple[str, ...]


_EQ11 = ("layers", "alpha", "max_layer_ratio", "round_to")
ALLOCATION_SPECS: Registry[AllocationSpec] = Registry("allocation")
for _spec in (
    AllocationSpec("uniform", "one ratio in every layer", ("max_layer_ratio", "round_to", "only", "tensor_parallel")),
    AllocationSpec(
        "eq11",
        "SlimLLM's Eq. 11 ratios from the layers' cosines (alias slimllm)",
        (*_EQ11, "only", "tensor_parallel"),
    ),
    AllocationSpec("flap", "FLAP's adaptive structure: standardised scores compared across layers", ("round_to",)),
    AllocationSpec("search", "Eq. 11's counts refined by a KL search", (*_EQ11, "search_minutes", "search_steps")),
):
    ALLOCATION_SPECS.add(_spec)
ALLOCATIONS = tuple(ALLOCATION_SPECS)
_ALLOCATION_ALIASES = {"slimllm": "eq11", "slimllm-ratios": "eq11"}


# The order of help texts and benchmark tables: SlimLLM, then the baselines from the simplest.
_LISTING_ORDER = ("slimllm", "obs", "magnitude", "wanda-sp", "flap", "taylor", "random")


def available_methods() -> list[str]:
    """Registered methods, in listing order; methods registered by other code come last."""
    return sorted(REGISTRY, key=lambda name: (_LISTING_ORDER.index(name) if name in _LISTING_ORDER else 99, name))


def option_readers(field: str) -> str:
    """Which plug-ins read the :class:`PruneConfig` field ``field``: every run (the shared fields),
    else the methods and ``@allocations`` that declare it; the command itself for other options."""
    from slimllm.config import SHARED_FIELDS, PruneConfig

    if field in SHARED_FIELDS:
        return "every run"
    if field not in PruneConfig.__dataclass_fields__:
        return "the command"
    readers = [name for name in available_methods() if field in REGISTRY[name].options]
    readers += [f"@{name}" for name, spec in ALLOCATION_SPECS.items() if field in spec.options]
    return ", ".join(readers)


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
    check_options(config, spec, allocation)
    criteria = spec.build(config)
    prepares = [criteria.prepare] if criteria.prepare is not None else []
    adds_bias = criteria.recovery.adds_bias
    if allocation == "flap":
        allocator = flap.FlapAllocation(gqa=config.gqa, adds_bias=adds_bias)
        prepares.append(allocator.prepare)
    else:
        options = ALLOCATION_SPECS[allocation].options
        allocator = eq11_allocator(
            uniform=allocation == "uniform",
            adds_bias=adds_bias,
            one_part="only" in options,
            splits="tensor_parallel" in options,
        )
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


def check_options(config: PruneConfig, spec: MethodSpec, allocation: str) -> None:
    """Refuse a method-specific option set away from its default that neither the method nor
    its allocation reads (``--method flap --recovery ridge``): silently ignored, it would
    mislead."""
    owned = {*spec.options, *ALLOCATION_SPECS[allocation].options}
    for item in fields(PruneConfig):
        if item.name in SHARED_FIELDS or item.name in owned:
            continue
        value = vars(config)[item.name]  # not getattr: this is no use of the option (tests track uses)
        if value != item.default:
            readers = ", ".join(_flag(name) for name in sorted(owned)) or "nothing more"
            raise ConfigError(
                f"{_flag(item.name, value)} does not apply to --method {config.method} "
                f"(method {spec.name} with the {allocation} allocation reads {readers}); drop it"
            )


def _flag(name: str, value=None) -> str:
    """How the command line spells field ``name`` set to ``value`` (``--no-regression``)."""
    flag = name.replace("_", "-")
    if value is None:
        return f"--{flag}"
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def allocation_help() -> str:
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in ALLOCATION_SPECS.values())


def recovery_help() -> str:
    return "; ".join(f"{name}: {recovery.summary}" for name, recovery in RECOVERIES.items())


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
    "ALLOCATION_SPECS",
    "RECOVERIES",
    "AllocationSpec",
    "Method",
    "MethodSpec",
    "NoRecovery",
    "RegressionRecovery",
    "allocation_help",
    "available_methods",
    "build_method",
    "check_options",
    "method_help",
    "option_readers",
    "parse_method",
    "recovery_help",
    "register",
]
