"""``slimllm`` command line: argument parsing only; each subcommand lives in slimllm.commands."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# Each module in slimllm.commands provides ``register(subparsers)``, which adds its parser and
# sets ``run`` (args -> exit code) as the default. Modules import heavy libraries lazily.
COMMANDS = ("prune", "eval", "finetune", "distill", "bench", "export", "convert")


class _Parser(argparse.ArgumentParser):
    """``slimllm COMMAND @FILE`` reads arguments from FILE (argparse's ``fromfile_prefix_chars``):
    a benchmark's settings live in a committed file (``benchmarks/specs/``), one or more arguments
    per line as a shell would split them, ``#`` starting a comment line."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return _arguments_of_line(arg_line)


def _arguments_of_line(line: str) -> list[str]:
    line = line.strip()
    return [] if not line or line.startswith("#") else shlex.split(line)


def expand_argument_files(argv: list[str]) -> list[str]:
    """``argv`` with each ``@FILE`` replaced by the arguments it holds (what the command ran)."""
    expanded = []
    for arg in argv:
        if arg.startswith("@"):
            with open(arg[1:], encoding="utf-8") as file:
                lines = file.read().splitlines()
            expanded += expand_argument_files([a for line in lines for a in _arguments_of_line(line)])
        else:
            expanded.append(arg)
    return expanded


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slimllm",
        description="Structured pruning of LLaMA-family models (SlimLLM).",
        fromfile_prefix_chars="@",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"slimllm.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from slimllm.progress import log_lines_unless_terminal

    log_lines_unless_terminal()  # in a log, one line per stage instead of a bar's redraws
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
