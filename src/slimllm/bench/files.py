"""The files of a bench output folder, shared by the runner (cells) and the report (results)."""

from __future__ import annotations

from pathlib import Path

import torch

from slimllm.runtime import write_json_atomic

CELLS_DIR = "cells"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FORMAT_VERSION = 1


def write_record(path: Path, data: dict) -> None:
    """A cell record or results.json, written atomically (tensors become lists, paths strings)."""
    write_json_atomic(path, data, indent=1, default=_json_default)


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)
