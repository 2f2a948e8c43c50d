"""Rewrite the generated blocks of docs/ from the code: ``python scripts/update_docs.py``.

A block sits between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``;
tests/test_docs_generated.py fails when a block differs from what this script would write.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks() -> dict[tuple[str, str], str]:
    """(file under the repository, block name) → the block's generated text."""
    from slimllm.commands.prune import options_markdown

    return {("docs/usage.md", "slimllm prune options"): options_markdown()}


def pattern(name: str) -> re.Pattern:
    name = re.escape(name)
    return re.compile(rf"(<!-- BEGIN generated: {name} -->\n)(.*?)(<!-- END generated: {name} -->)", re.S)


def main() -> int:
    for (file, name), text in blocks().items():
        path = ROOT / file
        content = path.read_text()
        if not pattern(name).search(content):
            print(f"{file}: no block {name!r}", file=sys.stderr)
            return 1
        match = pattern(name).search(content)
        path.write_text(content[: match.start(2)] + text + "\n" + content[match.end(2) :])
        print(f"{file}: {name} rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
