"""The plug-in registry: every option a method, allocation or recovery declares reaches the code
that reads it, and an option the chosen plug-ins do not read is refused, never ignored."""

from __future__ import annotations

import dataclasses
from dataclasses import fields

import pytest
import torch

import slimllm
from slimllm.config import ConfigError, PruneConfig
from slimllm.methods import ALLOCATION_SPECS, RECOVERIES, REGISTRY, build_method, option_names, plug_in_options
from tiny_models import VOCAB, tiny_llama

OPTIONS = {item.name: item for item in plug_in_options()}
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
# settings an option needs beside it (fields of every run, so no plug-in ownership changes)
WITH = {"tensor_parallel": {"gqa": "group"}}
OPTION_CLASSES = {spec.options for spec in REGISTRY.values()} | {spec.options for spec in ALLOCATION_SPECS.values()}


def test_every_plug_in_option_has_a_test_value_and_one_meaning():
    assert set(OTHER_VALUE) == set(OPTIONS)
    for name, value in OTHER_VALUE.items():
        assert value != OPTIONS[name].default
    # a plug-in option is no field of every run, and a name means one thing: one default, one help
    assert not set(OPTIONS) & set(PruneConfig.__dataclass_fields__)
    for options_class in OPTION_CLASSES:
        for item in fields(options_class):
            assert (item.default, item.metadata["help"]) == (
                OPTIONS[item.name].default,
                OPTIONS[item.name].metadata["help"],
            )


def _owned(method: str, allocation: str) -> set[str]:
    return option_names(REGISTRY[method].options) | option_names(ALLOCATION_SPECS[allocation].options)


@pytest.mark.parametrize("allocation", sorted(ALLOCATION_SPECS))
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_an_option_no_chosen_plug_in_reads_is_refused(method, allocation):
    owned = _owned(method, allocation)
    for name in OPTIONS:
        config = PruneConfig(
            ratio=0.2, method=f"{method}@{allocation}", options={name: OTHER_VALUE[name]}, **WITH.get(name, {})
        )
        if name in owned:
            built = build_method(config)
            assert built.options_dict()[name] == OTHER_VALUE[name]  # it reached the plug-in's options
        else:
            flag = name.replace("_", "-")
            with pytest.raises(ConfigError, match=f"--(no-)?{flag}.* does not apply to --method {method}@{allocation}"):
                build_method(config)


def test_an_option_given_at_its_default_to_a_plug_in_that_does_not_read_it_is_refused_too():
    with pytest.raises(ConfigError, match="--recovery regression does not apply to --method flap"):
        build_method(PruneConfig(ratio=0.2, method="flap", options={"recovery": "regression"}))


def test_an_unknown_option_and_an_unknown_recovery_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown option 'alpah'; the options of the plug-ins are alpha, "):
        build_method(PruneConfig(ratio=0.2, options={"alpah": 7}))
    with pytest.raises(ConfigError, match="unknown recovery 'lasso'; use one of regression, ridge"):
        build_method(PruneConfig(ratio=0.2, options={"recovery": "lasso"}))


def test_a_flat_dict_and_a_preset_split_into_fields_and_options():
    config = PruneConfig.from_dict({"ratio": 0.2, "nsamples": 64, "alpha": 7.0, "recovery": "ridge"})
    assert config.nsamples == 64 and config.options == {"alpha": 7.0, "recovery": "ridge"}
    assert PruneConfig.from_json(config.to_json()) == config
    best = PruneConfig.from_preset("best", ratio=0.2)
    assert best.nsamples == 128 and best.options == {"recovery": "ridge-layer"}


class _Reads:
    """The attributes of plug-in options read, outside their own validation and whole copies."""

    def __init__(self):
        self.names: set[str] = set()
        self.paused = 0


@pytest.fixture
def option_reads(monkeypatch) -> _Reads:
    reads = _Reads()
    for options_class in OPTION_CLASSES:
        names = option_names(options_class)

        def getattribute(self, name, names=names):
            if name in names and not reads.paused:
                reads.names.add(name)
            return object.__getattribute__(self, name)

        monkeypatch.setattr(options_class, "__getattribute__", getattribute)
        if "__post_init__" in vars(options_class):
            monkeypatch.setattr(options_class, "__post_init__", _paused(reads, vars(options_class)["__post_init__"]))
    monkeypatch.setattr("slimllm.methods.base.asdict", _paused(reads, dataclasses.asdict))
    return reads


def _paused(reads: _Reads, function):
    def run(*args, **kwargs):
        reads.paused += 1
        try:
            return function(*args, **kwargs)
        finally:
            reads.paused -= 1

    return run


RUNS = [(method, REGISTRY[method].default_allocation) for method in sorted(REGISTRY)]
RUNS += [("slimllm", allocation) for allocation in sorted(ALLOCATION_SPECS) if allocation != "eq11"]


@pytest.mark.parametrize(("method", "allocation"), RUNS, ids=[f"{m}@{a}" for m, a in RUNS])
def test_every_declared_option_is_read(method, allocation, option_reads):
    """A whole prune of a tiny model, recording which plug-in options its code reads: every one
    the method and allocation declare (a declared option nobody reads would be ignored)."""
    options = {"search_steps": 2} if allocation == "search" else {}
    config = PruneConfig(
        ratio=0.3, method=f"{method}@{allocation}", nsamples=8, seqlen=16, batch_size=4, options=options
    )
    data = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(3))
    slimllm.prune(tiny_llama(), None, config, data=data, progress=False)
    assert option_reads.names == _owned(method, allocation)


@pytest.mark.parametrize("recovery", sorted(RECOVERIES))
def test_every_recovery_runs_through_the_methods_that_read_it(recovery):
    data = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(4))
    for method in (name for name, spec in REGISTRY.items() if "recovery" in option_names(spec.options)):
        config = PruneConfig(
            ratio=0.3, method=method, nsamples=8, seqlen=16, batch_size=4, options={"recovery": recovery}
        )
        _, plan = slimllm.prune(tiny_llama(), None, config, data=data, progress=False)
        assert plan.config["options"]["recovery"] == recovery
        assert any(layer.mlp_recovery is not None for layer in plan.layers)  # the recovery was folded in
