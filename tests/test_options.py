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


def test_every_prune_setting_has_an_option():
    args = _prune_parser().parse_args(["prune", "m", "--output", "o", "--ratio", "0.3"])
    assert {item.name for item in fields(PruneConfig)} <= set(vars(args))


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
    assert getattr(config_from_args(args), name) == value


def test_the_ratio_is_required_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        _prune_parser().parse_args(["prune", "m", "--output", "o"])
    assert "--ratio" in capsys.readouterr().err
