"""The plug-in registry: every option a method, allocation or recovery declares reaches the code
that reads it, and an option the chosen plug-ins do not read is refused, never ignored."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

import slimllm
from slimllm.config import SHARED_FIELDS, ConfigError, PruneConfig
from slimllm.methods import ALLOCATION_SPECS, RECOVERIES, REGISTRY, build_method
from tiny_models import VOCAB, tiny_llama

FIELDS = {item.name for item in fields(PruneConfig)}
SPECIFIC = sorted(FIELDS - SHARED_FIELDS)
# a value other than the default for every plug-in option
OTHER_VALUE = {
    "alpha": 5.0,
    "layers": 3,
    "max_layer_ratio": 0.8,
    "greedy": False,
    "feature_space": False,
    "regression": False,
    "recovery": "ridge",
    "only": "ffn",
    "search_minutes": 1.0,
    "search_steps": 2,
    "keep_lowest": 0.0,
    "round_to": 2,
    "tensor_parallel": 2,
}
# settings an option needs beside it (shared fields, so no plug-in ownership changes)
WITH = {"tensor_parallel": {"gqa": "group"}}


def test_every_plug_in_option_has_a_test_value_and_every_field_an_owner():
    assert set(OTHER_VALUE) == set(SPECIFIC)
    for name, value in OTHER_VALUE.items():
        assert value != PruneConfig.__dataclass_fields__[name].default
    owned = {option for spec in REGISTRY.values() for option in spec.options}
    owned |= {option for spec in ALLOCATION_SPECS.values() for option in spec.options}
    assert owned == set(SPECIFIC)  # no field nobody reads, no option of a field that does not exist


def _owned(method: str, allocation: str) -> set[str]:
    return {*REGISTRY[method].options, *ALLOCATION_SPECS[allocation].options}


@pytest.mark.parametrize("allocation", sorted(ALLOCATION_SPECS))
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_an_option_no_chosen_plug_in_reads_is_refused(method, allocation):
    owned = _owned(method, allocation)
    for name in SPECIFIC:
        config = PruneConfig(
            ratio=0.2, method=f"{method}@{allocation}", **{name: OTHER_VALUE[name]}, **WITH.get(name, {})
        )
        if name in owned:
            build_method(config)
        else:
            flag = name.replace("_", "-")
            with pytest.raises(ConfigError, match=f"--(no-)?{flag}.* does not apply to --method {method}@{allocation}"):
                build_method(config)


def test_an_unknown_recovery_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown recovery 'lasso'; use one of regression, ridge"):
        build_method(PruneConfig(ratio=0.2, recovery="lasso"))


class _Reads:
    """The PruneConfig fields read, outside whole-config copies (to_dict, validate)."""

    def __init__(self):
        self.names: set[str] = set()
        self.paused = False


def _recording_config(reads: _Reads, **settings) -> PruneConfig:
    class Recording(PruneConfig):
        def __getattribute__(self, name):
            if name in FIELDS and not reads.paused:
                reads.names.add(name)
            return super().__getattribute__(name)

        def to_dict(self):
            reads.paused = True
            try:
                return super().to_dict()
            finally:
                reads.paused = False

        def validate(self):
            reads.paused = True
            try:
                super().validate()
            finally:
                reads.paused = False

    return Recording(**settings)


RUNS = [(method, REGISTRY[method].default_allocation) for method in sorted(REGISTRY)]
RUNS += [("slimllm", allocation) for allocation in sorted(ALLOCATION_SPECS) if allocation != "eq11"]


@pytest.mark.parametrize(("method", "allocation"), RUNS, ids=[f"{m}@{a}" for m, a in RUNS])
def test_every_declared_option_is_read_and_nothing_else(method, allocation):
    """A whole prune of a tiny model with a config that records which fields are read."""
    reads = _Reads()
    settings = dict(ratio=0.3, method=f"{method}@{allocation}", nsamples=8, seqlen=16, batch_size=4)
    if allocation == "search":
        settings["search_steps"] = 2
    config = _recording_config(reads, **settings)
    data = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(3))
    slimllm.prune(tiny_llama(), None, config, data=data, progress=False)
    assert reads.names - SHARED_FIELDS == _owned(method, allocation)


@pytest.mark.parametrize("recovery", sorted(RECOVERIES))
def test_every_recovery_runs_through_the_methods_that_read_it(recovery):
    data = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(4))
    for method in (name for name, spec in REGISTRY.items() if "recovery" in spec.options):
        config = PruneConfig(ratio=0.3, method=method, recovery=recovery, nsamples=8, seqlen=16, batch_size=4)
        _, plan = slimllm.prune(tiny_llama(), None, config, data=data, progress=False)
        assert plan.config["recovery"] == recovery
        assert any(layer.mlp_recovery is not None for layer in plan.layers)  # the recovery was folded in
