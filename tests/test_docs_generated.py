"""The generated blocks of docs/ (option tables from the registry and the parser) are current."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _update_docs():
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_block_matches_the_code():
    update_docs = _update_docs()
    for (file, name), text in update_docs.blocks().items():
        match = update_docs.pattern(name).search((ROOT / file).read_text())
        assert match, f"{file} has no generated block {name!r}"
        assert match[2] == text + "\n", f"{file}: block {name!r} is stale; run python scripts/update_docs.py"


def test_the_prune_table_lists_every_option_with_its_readers():
    from slimllm.commands.prune import options_markdown
    from slimllm.config import PruneConfig
    from slimllm.methods import option_readers, plug_in_options

    table = options_markdown()

    def row(name: str) -> str | None:
        flag = name.replace("_", "-")
        return next(
            (line for line in table.splitlines() if f"| `--{flag}`" in line or f"| `--no-{flag}`" in line), None
        )

    for field in set(PruneConfig.__dataclass_fields__) - {"options"}:
        assert row(field) is not None, field
    for item in plug_in_options():  # each plug-in option names the methods and allocations that read it
        assert row(item.name) is not None and f"read by {option_readers(item.name)} |" in row(item.name), item.name
    assert "| `--recovery` `regression`\\|`ridge`" in table and "read by slimllm, obs |" in table
