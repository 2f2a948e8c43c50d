"""Pruning methods as plug-ins, one file each; ``--method NAME[@ALLOCATION]`` picks one.

Adding a method: a file here that scores heads and channels (maths in :mod:`slimllm.importance`),
declares the dataclass of its own options (if any) and calls :func:`~slimllm.methods.base.register`;
its import below makes ``--method``, its options' flags, ``slimllm bench`` and the help text know it.
Allocations (``@NAME``) are registered below with their options dataclasses (in
:mod:`slimllm.allocation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields

from slimllm.allocation import (
    Eq11Options,
    FlapAllocationOptions,
    SearchOptions,
    UniformOptions,
    eq11_allocator,
)
from slimllm.config import ConfigError, PruneConfig
from slimllm.methods import flap, obs, simple, slimllm, taylor  # noqa: F401  (each registers its method, in this order)
from slimllm.methods.base import (
    RECOVERIES,
    REGISTRY,
    Method,
    MethodSpec,
    NoOptions,
    NoRecovery,
    RecoveryOptions,
    RegressionRecovery,
    register,
)
from slimllm.registry import Registry


@dataclass(frozen=True)
class AllocationSpec:
    """A way to set the layer ratios (``--method NAME@ALLOCATION``): the dataclass of the options
    it reads and ``build(config, options, adds_bias) -> allocator`` (``allocator(cosines, costs,
    ratio_base, config) -> Allocation``; an allocator with a ``prepare`` method sees the dense model
    first). ``refine``, when set, improves the allocation on the whole dense model before the layer
    walk (``refine(model, adapter, method, config, allocation, costs, layer0_inputs, device, *,
    cosines, ratio_base, progress, cores) -> Allocation``); such an allocation needs the model in
    memory and runs in one process."""

    name: str
    summary: str
    options: type
    build: Callable
    refine: Callable | None = None


def _eq11(config, options, adds_bias: bool):
    return eq11_allocator(options, uniform=False, adds_bias=adds_bias)


def _uniform(config, options, adds_bias: bool):
    return eq11_allocator(options, uniform=True, adds_bias=adds_bias)


def _flap(config, options, adds_bias: bool):
    return flap.FlapAllocation(gqa=config.gqa, adds_bias=adds_bias, options=options)


def _search(*args, **kwargs):
    from slimllm.search import AllocationSearch  # imported when used: the search builds on this package

    return AllocationSearch(*args, **kwargs).run()


ALLOCATION_SPECS: Registry[AllocationSpec] = Registry("allocation")
for _spec in (
    AllocationSpec("uniform", "one ratio in every layer", UniformOptions, _uniform),
    AllocationSpec("eq11", "SlimLLM's Eq. 11 ratios from the layers' cosines (alias slimllm)", Eq11Options, _eq11),
    AllocationSpec(
        "flap", "FLAP's adaptive structure: standardised scores compared across layers", FlapAllocationOptions, _flap
    ),
    AllocationSpec("search", "Eq. 11's counts refined by a KL search", SearchOptions, _eq11, refine=_search),
):
    ALLOCATION_SPECS.add(_spec)
ALLOCATIONS = tuple(ALLOCATION_SPECS)
_ALLOCATION_ALIASES = {"slimllm": "eq11", "slimllm-ratios": "eq11"}


# The order of help texts and benchmark tables: SlimLLM, then the baselines from the simplest.
_LISTING_ORDER = ("slimllm", "obs", "magnitude", "wanda-sp", "flap", "taylor", "random")


def available_methods() -> list[str]:
    """Registered methods, in listing order; methods registered by other code come last."""
    return sorted(REGISTRY, key=lambda name: (_LISTING_ORDER.index(name) if name in _LISTING_ORDER else 99, name))


def option_names(options_class: type) -> set[str]:
    return {item.name for item in fields(options_class)}


def plug_in_options() -> list:
    """Every field of every registered method's and allocation's options dataclass, once per name
    (the first declaration's default and help; a name shared by plug-ins means the same there)."""
    seen, found = set(), []
    classes = [REGISTRY[name].options for name in available_methods()] + [s.options for s in ALLOCATION_SPECS.values()]
    for options_class in classes:
        for item in fields(options_class):
            if item.name not in seen:
                seen.add(item.name)
                found.append(item)
    return found


def without_default_options(config: PruneConfig) -> PruneConfig:
    """``config`` without the plug-in options set to their defaults: two configs that prune alike
    compare equal however their options were spelled."""
    defaults = {item.name: item.default for item in plug_in_options()}
    kept = {name: value for name, value in config.options.items() if name not in defaults or value != defaults[name]}
    return dataclasses.replace(config, options=kept)


def option_readers(name: str) -> str:
    """Which plug-ins read option ``name``: every run (a :class:`PruneConfig` field), else the
    methods and ``@allocations`` whose options declare it; the command itself for other options."""
    if name in PruneConfig.__dataclass_fields__:
        return "every run"
    readers = [method for method in available_methods() if name in option_names(REGISTRY[method].options)]
    readers += [f"@{spec.name}" for spec in ALLOCATION_SPECS.values() if name in option_names(spec.options)]
    return ", ".join(readers) or "the command"


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
    options, allocation_options = resolve_options(config, spec, allocation)
    criteria = spec.build(config, options)
    allocation_spec = ALLOCATION_SPECS[allocation]
    allocator = allocation_spec.build(config, allocation_options, criteria.recovery.adds_bias)
    prepares = [hook for hook in (criteria.prepare, getattr(allocator, "prepare", None)) if hook is not None]
    return Method(
        name=config.method,
        heads=criteria.heads,
        channels=criteria.channels,
        recovery=criteria.recovery,
        allocation=allocation,
        allocator=allocator,
        prepare=_chain(prepares),
        refine=allocation_spec.refine,
        # a refining allocation keeps candidate layers and runs the head on every trial
        whole_model=spec.whole_model or allocation_spec.refine is not None,
        options=options,
        allocation_options=allocation_options,
    )


def resolve_options(config: PruneConfig, spec: MethodSpec, allocation: str) -> tuple[object, object]:
    """The method's and the allocation's options dataclasses filled from ``config.options``.
    An option that neither reads is refused (``--method flap --recovery ridge``): silently
    ignored, it would mislead; so is a name no plug-in knows."""
    allocation_class = ALLOCATION_SPECS[allocation].options
    method_names, allocation_names = option_names(spec.options), option_names(allocation_class)
    known = {item.name for item in plug_in_options()}
    for name, value in config.options.items():
        if name in method_names or name in allocation_names:
            continue
        if name not in known:
            raise ConfigError(f"unknown option {name!r}; the options of the plug-ins are {', '.join(sorted(known))}")
        owned = method_names | allocation_names
        readers = ", ".join(_flag(owner) for owner in sorted(owned)) or "nothing more"
        raise ConfigError(
            f"{_flag(name, value)} does not apply to --method {config.method} "
            f"(method {spec.name} with the {allocation} allocation reads {readers}); drop it"
        )
    options = spec.options(**{k: v for k, v in config.options.items() if k in method_names})
    allocation_options = allocation_class(**{k: v for k, v in config.options.items() if k in allocation_names})
    if getattr(allocation_options, "tensor_parallel", 1) > 1 and config.gqa != "group":
        raise ConfigError(
            "tensor_parallel needs gqa='group' (--gqa group): vLLM splits a layer's key/value heads over the "
            "GPUs with the query heads each serves, so whole groups must go"
        )
    return options, allocation_options


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
    "NoOptions",
    "NoRecovery",
    "RecoveryOptions",
    "RegressionRecovery",
    "allocation_help",
    "available_methods",
    "build_method",
    "method_help",
    "option_names",
    "option_readers",
    "parse_method",
    "plug_in_options",
    "recovery_help",
    "register",
    "resolve_options",
    "without_default_options",
]
