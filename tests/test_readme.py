"""README.md is the front door: its commands must parse, it stays short, and its links (and docs/'s) resolve.

Every `slimllm` command line in README's ```bash blocks is checked against the real command line: the
subcommand's `--help` exits 0 and lists every `--option` the line uses. The `--help` outputs are
taken once, in one interpreter, so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300
# The two set-up commands CI and newcomers run; README must show them as they are.
SETUP_COMMANDS = (
    "bash scripts/install.sh && .venv/bin/slimllm prune smollm2-135m --ratio 0.2 --output out/smollm2-20 --overwrite",
    "bash scripts/install.sh && .venv/bin/python -m pytest -q",
)

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# [text](target) and ![alt](target), with an optional "title".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def bash_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in ("bash", "sh", "shell")]


def slimllm_invocation(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) when one shell command runs slimllm, else None.

    `slimllm SUB ...`, `.venv/bin/slimllm SUB ...`, `python -m slimllm SUB ...`, and launchers that run
    the module (`torchrun ... -m slimllm SUB ...`, `accelerate launch -m slimllm SUB ...`)."""
    if not tokens:
        return None
    if Path(tokens[0]).name == "slimllm":
        rest = tokens[1:]
    elif "-m" in tokens and tokens.index("-m") + 1 < len(tokens) and tokens[tokens.index("-m") + 1] == "slimllm":
        rest = tokens[tokens.index("-m") + 2 :]
    else:
        return None
    if not rest or rest[0].startswith("-"):
        return None
    return rest[0], rest[1:]


def readme_commands(text: str) -> list[tuple[str, str, list[str]]]:
    """(shown line, subcommand, arguments) for every slimllm command in the text's bash blocks."""
    found = []
    for block in bash_blocks(text):
        joined = re.sub(r"\\\n", " ", block)  # continuation lines
        for line in joined.splitlines():
            tokens = shlex.split(line, comments=True)
            command: list[str] = []
            for token in [*tokens, "&&"]:
                if token in ("&&", "||", ";", "|"):
                    invocation = slimllm_invocation(command)
                    if invocation:
                        found.append((" ".join(line.split()), *invocation))
                    command = []
                else:
                    command.append(token)
    return found


README_TEXT = README.read_text(encoding="utf-8")
COMMANDS = readme_commands(README_TEXT)


# Runs `python -m slimllm SUB --help` for each SUB in one interpreter: runpy executes slimllm/__main__.py
# as `-m` does, so importing torch and transformers (seconds) is paid once, not once per subcommand.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
subs, out = sys.argv[1:], {}
for sub in subs:
    sys.argv = ["slimllm", sub, "--help"]
    buf, code = io.StringIO(), 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            runpy.run_module("slimllm", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
    out[sub] = [code, buf.getvalue()]
print(json.dumps(out))
"""


@cache
def help_texts() -> dict[str, tuple[int, str]]:
    """`--help` of `slimllm` itself (key "") and of every subcommand README uses: (exit status, output)."""
    env = {**os.environ, "COLUMNS": "1000"}  # no wrapping inside option names
    subs = sorted({sub for _, sub, _ in COMMANDS})
    run = {"cwd": ROOT, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    top = subprocess.Popen([sys.executable, "-m", "slimllm", "--help"], **run)
    driver = subprocess.Popen([sys.executable, "-c", HELP_DRIVER, *subs], **run)
    driver_out, _ = driver.communicate(timeout=300)
    top_out, _ = top.communicate(timeout=300)
    assert driver.returncode == 0, driver_out
    out = {sub: (code, text) for sub, (code, text) in json.loads(driver_out.strip().splitlines()[-1]).items()}
    out[""] = (top.returncode, top_out)
    return out


def test_readme_shows_the_main_commands():
    subcommands = {sub for _, sub, _ in COMMANDS}
    assert {"prune", "eval", "distill", "export"} <= subcommands, subcommands
    status, text = help_texts()[""]
    assert status == 0, text
    for sub in subcommands:
        assert re.search(rf"^\s+{sub}\s", text, re.M), f"`slimllm --help` does not list {sub}:\n{text}"
    for command in SETUP_COMMANDS:
        assert command in README_TEXT, f"README must show the set-up command as it is: {command}"


@pytest.mark.parametrize(("line", "sub", "args"), COMMANDS, ids=[line[:80] for line, _, _ in COMMANDS])
def test_readme_command_parses(line, sub, args, monkeypatch):
    from slimllm.cli import expand_argument_files

    status, text = help_texts()[sub]
    assert status == 0, f"`slimllm {sub} --help` failed for README line {line!r}:\n{text}"
    monkeypatch.chdir(ROOT)
    args = expand_argument_files(args)  # @FILE: the arguments of a committed file (benchmarks/specs/)
    options = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    unknown = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
    assert not unknown, f"README line {line!r} uses options `slimllm {sub}` does not have: {unknown}"


def test_readme_is_short():
    lines = README_TEXT.count("\n") + (not README_TEXT.endswith("\n"))
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move details into docs/"


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))  # code is not links
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ...; anchors within the page
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    missing = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_links_every_doc():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    unlinked = [d.name for d in DOCS if d.resolve() not in linked]
    assert not unlinked, f"README's Documentation list misses {unlinked}"
