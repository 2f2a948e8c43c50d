"""benchmarks/specs/: the committed settings of each `slimllm bench` run (``slimllm bench @FILE``).
Each file parses as the command's arguments, describes a valid run that writes where the results
index says, and the command a run records writes the file's arguments out."""

import shlex
import sys
from pathlib import Path

import pytest

from slimllm.cli import build_parser, expand_argument_files
from slimllm.commands.bench import _command_line, spec_from_args

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "benchmarks" / "specs").glob("*.args"))


def test_there_are_specs():
    assert len(SPECS) >= 3


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_a_spec_is_a_valid_run_into_a_folder_the_results_index_lists(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["bench", f"@{path.relative_to(ROOT)}"]
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    spec.validate()
    assert spec.cells()
    assert f"`{spec.out}/`" in (ROOT / "docs" / "results.md").read_text()
    monkeypatch.setattr(sys, "argv", ["slimllm", *argv])
    recorded = shlex.split(_command_line(args))
    assert recorded[:2] == ["slimllm", "bench"] and not any(arg.startswith("@") for arg in recorded)
    assert build_parser().parse_args(recorded[1:]) == args  # the record reruns the same run


def test_argument_files_take_comments_quotes_and_nest(tmp_path):
    inner = tmp_path / "inner.args"
    inner.write_text("# a comment\n--ratios 0.2\n\n--calib 'my file.txt'\n")
    outer = tmp_path / "outer.args"
    outer.write_text(f"smollm2-135m\n@{inner}\n--out o\n")
    assert expand_argument_files(["bench", f"@{outer}", "--quiet"]) == [
        "bench", "smollm2-135m", "--ratios", "0.2", "--calib", "my file.txt", "--out", "o", "--quiet"
    ]  # fmt: skip
    args = build_parser().parse_args(["bench", f"@{outer}"])
    assert (args.model, args.ratios, args.calib, args.out) == ("smollm2-135m", [0.2], "my file.txt", "o")


def test_every_benchmark_script_is_in_the_index_of_entry_points():
    index = (ROOT / "docs" / "results.md").read_text()
    index = index[index.index("## Benchmarks: one entry point per kind") : index.index("## Result folders")]
    scripts = [
        path.relative_to(ROOT).as_posix()
        for pattern in ("*.py", "*.sh", "*.args")
        for path in (ROOT / "benchmarks").rglob(pattern)
        if "results" not in path.relative_to(ROOT / "benchmarks").parts[0]
    ]
    assert scripts
    assert [script for script in scripts if f"`{script}`" not in index and f"@{script}`" not in index] == []


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_a_spec_reproduces_its_committed_cells(path, monkeypatch):
    """Every cell the spec asks for is committed, pruned with the settings the spec gives it now: a
    rerun of the spec would measure nothing again (what the results say is what the spec runs)."""
    import json

    from slimllm.bench.runner import _recorded_config, prune_config
    from slimllm.methods import without_default_options

    monkeypatch.chdir(ROOT)
    spec = spec_from_args(build_parser().parse_args(["bench", f"@{path.relative_to(ROOT)}"]))
    for cell in spec.cells():
        record = json.loads((ROOT / spec.out / "cells" / f"{cell.key}.json").read_text())
        assert record["status"] == "done", cell.key
        if cell.kind != "dense":
            assert _recorded_config(record) == without_default_options(prune_config(spec, cell)), cell.key
