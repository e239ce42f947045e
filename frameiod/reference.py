"""The generated pages of the documentation's reference, printed from the code itself.

    python -m frameiod.reference config > docs/reference/config.md
    python -m frameiod.reference cli > docs/reference/cli.md

(``make docs-reference`` writes both.) ``config`` reads the pydantic models of
``config.toml`` (`frameiod.config.models`): every table and key with its type, default and
description. ``cli`` reads the argument parser (`frameiod.cli.main.build_parser`): every
command and subcommand with its arguments and help. tests/test_docs_reference.py fails when
a committed page differs from what this module prints, so the reference cannot drift from
the code. The output depends on nothing but the code: no terminal width, no environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from frameiod.cli.main import build_parser
from frameiod.config.durations import AnswerDeadline, Duration, format_duration
from frameiod.config.models import Config
from frameiod.config.secret_refs import Secret, SecretRef

__all__ = ["PAGES", "cli_reference", "config_reference", "main"]

_CONFIG_INTRO = """\
Every table and key of `config.toml`, generated from the pydantic models that validate it
(`frameiod/config/models.py`). Unknown keys are errors.

A **duration** is a string of a number and a unit: `"250ms"`, `"30s"`, `"5m"`, `"1.5h"`.
A **secret reference** is a literal, `"env:NAME"` (an environment variable),
`"file:PATH"` (a file; one trailing newline is ignored) or `"credential:NAME"` (systemd's
`$CREDENTIALS_DIRECTORY/NAME`). A relative path resolves against `$STATE_DIRECTORY` when it
is set, else against the folder holding the config file.
"""

_CLI_INTRO = """\
Every command and subcommand of `frameiod`, generated from its argument parser
(`frameiod/cli/main.py`). `frameiod COMMAND --help` prints the same from the command line.
"""


def _generated_note(page: str, source: str) -> str:
    return (
        f"<!-- Generated from {source} by `python -m frameiod.reference {page} > "
        f"docs/reference/{page}.md` (make docs-reference): edit the code, not this page. -->"
    )


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


# --- config ----------------------------------------------------------------------------

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_name(hint: Any) -> str:
    """A reader's name for a field's type hint."""
    if hint == Duration:
        return "duration"
    if hint == AnswerDeadline:
        return "duration (under 5s)"
    if hint == SecretRef:
        return "secret reference"
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        kept = [arg for arg in args if arg is not type(None)]
        return " or ".join(_type_name(arg) for arg in kept)
    if origin is list:
        return f"list of {_type_name(args[0])}s"
    if origin is dict:
        return "table"
    return getattr(hint, "__name__", str(hint))


def _bounds(field: FieldInfo) -> str:
    """The field's numeric and length constraints, e.g. ``≥ 1``."""
    said = []
    for item in field.metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(item, attribute, None)
            if bound is not None:
                said.append(f"{sign} {bound}")
        if getattr(item, "min_length", None):
            said.append(f"at least {item.min_length}")
    return ", ".join(said)


def _toml(value: Any, hint: Any) -> str:
    """A default as it would be written in ``config.toml``."""
    if isinstance(value, Secret):
        return json.dumps(value.reveal())
    if isinstance(value, bool):
        return "true" if value else "false"
    if hint in (Duration, AnswerDeadline) and isinstance(value, float):
        return json.dumps(format_duration(value))
    return json.dumps(value)


def _default(field: FieldInfo, hint: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "not set"
    return f"`{_toml(value, hint)}`"


def _table_model(hint: Any) -> tuple[type[BaseModel], bool] | None:
    """The model of a sub-table, and whether it is one table per name (``dict``)."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint, False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        found = _table_model(args[1])
        return (found[0], True) if found else None
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in args:
            found = _table_model(arg)
            if found:
                return found
    return None


def _summary(model: type[BaseModel]) -> str:
    """The model's docstring without the ``[table]``: prefix it starts with."""
    doc = " ".join((model.__doc__ or "").split())
    if doc.startswith("``["):
        doc = doc.split(":", 1)[1].strip()
    return doc[:1].upper() + doc[1:]


def _tables(model: type[BaseModel], name: str) -> Iterator[str]:
    """The sections of ``model``'s table, called ``name``, and of the tables inside it."""
    hints = typing.get_type_hints(model, include_extras=True)
    rows, inner = [], []
    for key, field in model.model_fields.items():
        hint = hints[key]
        table = _table_model(hint)
        if table is not None:
            sub_model, per_name = table
            inner.append((sub_model, f"{name}.{key}.<name>" if per_name else f"{name}.{key}"))
            continue
        kind = _type_name(hint)
        bounds = _bounds(field)
        kind = f"{kind} ({bounds})" if bounds else kind
        rows.append(
            f"| `{key}` | {_cell(kind)} | {_cell(_default(field, hint))} "
            f"| {_cell(field.description or '')} |"
        )
    if model.model_config.get("extra") == "allow":
        rows.append(
            f"| `[{name}.<name>]` | table | not set | One table per plugin, validated by that "
            "plugin's own model (its `frameiod_plugin_config_model` hook). |"
        )
    if name:
        yield f"## `[{name}]`\n"
        yield _summary(model) + "\n"
    if rows:
        yield "| key | type | default | description |"
        yield "| --- | --- | --- | --- |"
        yield from rows
        yield ""
    for sub_model, sub_name in inner:
        yield from _tables(sub_model, sub_name.lstrip("."))


def config_reference() -> str:
    """The configuration reference page (Markdown), from `frameiod.config.models.Config`."""
    lines = [
        "# Configuration reference",
        "",
        _generated_note("config", "frameiod/config/models.py"),
        "",
        _CONFIG_INTRO,
        *_tables(Config, ""),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- cli -------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """The subcommands of ``parser``, in the order its help lists them, with their help.

    argparse has no public way to walk its subparsers: this reads the parser's actions, as
    every documentation generator for argparse does.
    """
    found = []
    for action in parser._actions:
        if isinstance(action.choices, dict):
            helps = {choice.dest: choice.help or "" for choice in action._get_subactions()}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    found.append((helps.get(name, ""), sub))
    return found


def _argument(action: argparse.Action) -> str:
    """How an argument is written: ``--state {pending,dead}``, ``NAME [NAME ...]``."""
    if action.metavar is not None:
        metavar = str(action.metavar)
    elif action.choices is not None:
        metavar = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    else:
        metavar = action.dest if not action.option_strings else action.dest.upper()
    nargs = action.nargs
    if nargs == 0:
        shown = ""
    elif nargs == "?":
        shown = f"[{metavar}]"
    elif nargs == "*":
        shown = f"[{metavar} ...]"
    elif nargs == "+":
        shown = f"{metavar} [{metavar} ...]"
    elif isinstance(nargs, int):
        shown = " ".join([metavar] * nargs)
    else:
        shown = metavar
    names = ", ".join(action.option_strings)
    return f"{names} {shown}".strip() if names else shown


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    default = action.default
    show_default = (
        action.option_strings
        and action.nargs != 0
        and default not in (None, argparse.SUPPRESS, [], ())
        and "default" not in text
    )
    if show_default:
        text = f"{text} (default: {default})" if text else f"default: {default}"
    return text


def _command(parser: argparse.ArgumentParser, summary: str) -> Iterator[str]:
    heading = "#" * min(parser.prog.count(" ") + 1, 4)
    yield f"{heading} `{parser.prog}`\n"
    if summary:
        yield summary[:1].upper() + summary[1:].rstrip(".") + ".\n"
    if parser.description:
        yield " ".join(parser.description.split()) + "\n"
    rows = []
    subcommands = _commands(parser)
    for action in parser._actions:  # read as in _commands
        if action.help == argparse.SUPPRESS or "--help" in action.option_strings:
            continue
        if isinstance(action.choices, dict) and subcommands:
            continue
        rows.append(f"| `{_cell(_argument(action))}` | {_cell(_help(action, parser.prog))} |")
    if rows:
        yield "| argument | meaning |"
        yield "| --- | --- |"
        yield from rows
        yield ""
    if subcommands:
        names = ", ".join(
            f"[`{sub.prog.rsplit(' ', 1)[-1]}`](#{sub.prog.replace(' ', '-')})"
            for _, sub in subcommands
        )
        yield f"Subcommands: {names}.\n"
    if parser.epilog:
        yield " ".join(parser.epilog.split()) + "\n"
    for sub_summary, sub in subcommands:
        yield from _command(sub, sub_summary)


def cli_reference() -> str:
    """The command-line reference page (Markdown), from `frameiod.cli.main.build_parser`."""
    lines = [
        "# Command-line reference",
        "",
        _generated_note("cli", "frameiod/cli/main.py"),
        "",
        _CLI_INTRO,
    ]
    parser = build_parser()
    lines += list(_command(parser, ""))[1:]  # the page's own title stands for the first
    return "\n".join(lines).rstrip("\n") + "\n"


PAGES = {"config": config_reference, "cli": cli_reference}
"""Each generated page by its name: ``docs/reference/<name>.md``."""


def main(argv: Sequence[str] | None = None) -> int:
    """Print the page named on the command line (``config`` or ``cli``); return the status."""
    parser = argparse.ArgumentParser(
        prog="python -m frameiod.reference", description="Print a generated reference page."
    )
    parser.add_argument("page", choices=sorted(PAGES))
    args = parser.parse_args(argv)
    sys.stdout.write(PAGES[args.page]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
