"""``slimllm`` command line: argument parsing only; each subcommand lives in slimllm.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module in slimllm.commands provides ``register(subparsers)``, which adds its parser and
# sets ``run`` (args -> exit code) as the default. Modules import heavy libraries lazily.
COMMANDS = ("prune", "eval", "finetune", "distill", "bench", "export", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimllm", description="Structured pruning of LLaMA-family models (SlimLLM).")
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
