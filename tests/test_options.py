"""slimllm.options: command-line options built from settings dataclasses (``slimllm prune``)."""

import argparse
from dataclasses import fields

import pytest

from slimllm.commands.prune import config_from_args, register
from slimllm.config import PruneConfig


def _prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def test_prune_options_default_to_the_dataclass():
    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3"])
    assert config_from_args(args) == PruneConfig(ratio=0.3)


def test_every_prune_setting_and_plug_in_option_has_an_option():
    from slimllm.methods import plug_in_options

    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3"])
    assert {item.name for item in fields(PruneConfig)} - {"options"} <= set(vars(args))
    assert {item.name for item in plug_in_options()} <= set(vars(args))
    assert "options" not in vars(args)  # plug-in options are flags of their own, not a dict on the command line


@pytest.mark.parametrize(
    ("flags", "name", "value"),
    [
        (["--dtype", "bfloat16"], "dtype", "bfloat16"),
        (["--device", "cuda:1"], "device", "cuda:1"),
        (["--threads", "1"], "threads", 1),
        (["--cache-gb", "0"], "cache_gb", 0.0),
        (["--alpha", "7"], "alpha", 7.0),
        (["--layers", "20"], "layers", 20),
        (["--no-regression"], "regression", False),
        (["--uniform"], "uniform", True),
        (["--gqa", "group"], "gqa", "group"),
    ],
)
def test_prune_flags_set_their_setting(flags, name, value):
    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3", *flags])
    config = config_from_args(args)
    if name in PruneConfig.__dataclass_fields__:
        assert getattr(config, name) == value and config.options == {}
    else:  # a plug-in option: in options, and only the options given are there
        assert config.options == {name: value}


def test_the_ratio_is_required_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        _prune_parser().parse_args(["prune", "m", "--output", "o"])
    assert "--ratio" in capsys.readouterr().err


def test_a_preset_fills_in_the_options_not_given():
    from slimllm.config import PRESETS

    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3", "--preset", "best"])
    assert config_from_args(args) == PruneConfig.from_dict({"ratio": 0.3, **PRESETS["best"]})
    assert config_from_args(args) == PruneConfig.from_preset("best", ratio=0.3)
    assert config_from_args(args) != PruneConfig(ratio=0.3)


@pytest.mark.parametrize("order", ["before", "after"])
def test_an_option_given_overrides_the_preset_even_when_it_repeats_the_default(order):
    flags = ["--recovery", "regression"]  # the dataclass default, which the preset changes
    preset = ["--preset", "best"]
    tail = [*flags, *preset] if order == "before" else [*preset, *flags]
    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3", *tail])
    config = config_from_args(args)
    assert config.options["recovery"] == "regression"
    assert config.nsamples == PruneConfig.from_preset("best", ratio=0.3).nsamples != PruneConfig().nsamples


def test_an_unknown_preset_is_named():
    from slimllm.config import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        PruneConfig.from_preset("fast", ratio=0.3)
