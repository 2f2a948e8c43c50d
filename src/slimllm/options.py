"""Command-line options built from a settings dataclass, so every default is written once
(``slimllm prune`` from :class:`~slimllm.config.PruneConfig`, ``slimllm finetune`` from
:class:`~slimllm.finetune.config.FinetuneConfig`). Field metadata, all optional:

- ``help``: the option's help text (``%`` written ``%%``, as argparse wants);
- ``flag``: the option name without ``--`` when it is not the field's name (``lr``);
- ``group``: the title of the argparse group the option is listed under;
- ``type``: the value type when the default (``None``) does not tell it;
- ``parse``: a function from the option's text to the field's value (comma lists into tuples);
- ``choices``: the allowed values;
- ``negatable``: for a boolean, offer ``--NAME`` and ``--no-NAME`` both;
- ``required``: the option must be given (the default is then only the Python API's).

Without ``negatable`` a boolean that defaults to False becomes ``--NAME`` and one that defaults
to True ``--no-NAME``, as in ``slimllm prune``. The fields given on the command line are listed
by :func:`given_fields`, so a preset can fill in only the others.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def add_dataclass_arguments(
    parser, config_class, *, skip: tuple[str, ...] = (), metadata: dict[str, dict] | None = None
) -> dict:
    """One option per field of ``config_class`` (except ``skip``), each with the field's default.
    ``metadata`` adds to or overrides fields' metadata, for what only a higher layer knows (the
    names of registered plug-ins).

    Returns the argument groups it made, by title, for options that belong beside them.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in fields(config_class):
        if item.name in skip:
            continue
        meta = {**item.metadata, **(metadata or {}).get(item.name, {})}
        target = parser
        if meta.get("group"):
            target = groups.get(meta["group"]) or groups.setdefault(
                meta["group"], parser.add_argument_group(meta["group"])
            )
        name = meta.get("flag") or item.name.replace("_", "-")
        default = item.default if item.default is not MISSING else item.default_factory()
        options = {"dest": item.name, "default": default, "help": meta.get("help")}
        if isinstance(default, bool):
            if meta.get("negatable"):
                target.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, **options)
            elif default:
                target.add_argument(f"--no-{name}", action="store_false", **options)
            else:
                target.add_argument(f"--{name}", action="store_true", **options)
            continue
        options["type"] = meta.get("parse") or meta.get("type") or (str if default is None else type(default))
        if "choices" in meta:
            options["choices"] = meta["choices"]
        if meta.get("required"):
            options["required"] = True
            del options["default"]
        _note_when_given(target.add_argument(f"--{name}", **options))
    return groups


_GIVEN = "_slimllm_given_fields"


def _note_when_given(action: argparse.Action) -> None:
    """Make ``action`` record its field in the namespace when its option is on the command line."""
    base = type(action)

    class Noted(base):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            setattr(namespace, _GIVEN, getattr(namespace, _GIVEN, frozenset()) | {self.dest})

    Noted.__name__ = base.__name__
    action.__class__ = Noted


def given_fields(args) -> frozenset[str]:
    """The fields whose options were given on the command line (not left at their defaults)."""
    return getattr(args, _GIVEN, frozenset())


def dataclass_from_arguments(config_class, args, defaults: dict | None = None):
    """``config_class`` from parsed arguments: the fields :func:`add_dataclass_arguments` added,
    with ``defaults`` (a preset) in place of the fields not given on the command line."""
    values = {item.name: getattr(args, item.name) for item in fields(config_class) if hasattr(args, item.name)}
    given = given_fields(args)
    values.update({name: value for name, value in (defaults or {}).items() if name not in given})
    return config_class(**values)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` as ``("a", "b", "c")``."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def markdown_table(parser: argparse.ArgumentParser, read_by=None) -> str:
    """Every option of ``parser`` as a markdown table: flag, default, meaning (its help text), and,
    with ``read_by`` (a function of the option's field name), which plug-ins read it. Documentation
    is generated from the parser so that it cannot drift from the code."""
    header = ["flag", "default", "meaning"] + (["read by"] if read_by else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        if action.choices:
            flags += " " + "\\|".join(f"`{choice}`" for choice in action.choices)
        meaning = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
        row = [flags, _default_text(action), meaning.replace("|", "\\|")]
        if read_by:
            row.append(read_by(action.dest))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _default_text(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"  # the flag is not given
    if isinstance(action.default, bool):
        return "on" if action.default else "off"
    if action.default is None:
        return "–"
    if isinstance(action.default, tuple):
        return ", ".join(map(str, action.default)) or "–"
    return f"`{action.default}`"
