"""``frameiod new-plugin NAME``: write a plugin package to start from, as datasette's plugin
template and probot's create-probot-app do: the entry point, an `App` with one handler and
a strict config model, a test on a real daemon, and a README."""

from __future__ import annotations

import argparse
import re
import string
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from frameiod import __version__
from frameiod.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from frameiod.terminal import printable

__all__ = ["add_new_plugin_command", "cmd_new_plugin", "plugin_files"]

# A plugin's name is a key of [plugins.NAME] and part of its package's name: lowercase
# words joined by "_" or "-" (written "_" in both places), starting with a letter.
_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_PREFIX = "frameiod-"

# Each template (in frameiod/cli/plugin_template/) and where it goes in the new package.
_TEMPLATES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "package.py.tmpl": "${package}/__init__.py",
    "test_plugin.py.tmpl": "tests/test_${plugin}.py",
}


def _names(name: str) -> dict[str, str] | None:
    """The plugin's names derived from NAME (``greeter`` or ``frameiod-greeter``): the
    plugin (entry point and config table), its package and its distribution; None when
    NAME cannot make them."""
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX) :]
    if not _NAME.fullmatch(name):
        return None
    plugin = name.replace("-", "_")
    return {
        "plugin": plugin,
        "package": f"frameiod_{plugin}",
        "distribution": f"{_PREFIX}{plugin.replace('_', '-')}",
    }


def plugin_files(name: str, folder: str) -> dict[str, str]:
    """The files of a new plugin package named ``name``, relative path → text; ``folder``
    is how its README names the package's folder. ``name`` must be a valid plugin name."""
    names = _names(name)
    if names is None:
        raise ValueError(f"not a plugin name: {name!r}")
    values = {**names, "folder": folder, "frameiod_version": __version__}
    templates = files("frameiod.cli").joinpath("plugin_template")
    return {
        string.Template(target).substitute(values): string.Template(
            templates.joinpath(source).read_text(encoding="utf-8")
        ).substitute(values)
        for source, target in _TEMPLATES.items()
    }


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a new plugin package into ``--dir`` (default: a new folder named after its
    distribution, under the current one), refusing a folder that exists."""
    names = _names(args.name)
    if names is None:
        print(
            f"frameiod new-plugin: refused {printable(repr(args.name))}: a plugin name is "
            "lowercase letters, digits, '-' or '_', starting with a letter (e.g. greeter)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    folder = Path(args.dir) if args.dir else Path(names["distribution"])
    if folder.exists():
        print(
            f"frameiod new-plugin: refused {printable(str(folder))}: it exists; "
            "give --dir a new folder",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        for relative, text in plugin_files(args.name, str(folder)).items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"frameiod new-plugin: cannot write {printable(str(folder))}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    shown = printable(str(folder))
    print(f"wrote {names['distribution']} into {shown}/ (plugin {names['plugin']})")
    print(f"  test it:    cd {shown} && pip install -e '.[test]' && pytest")
    print(f"  install it: frameiod install -e {shown}")
    print(f"  configure:  [plugins.{names['plugin']}] in config.toml, then frameiod check")
    return EXIT_OK


def add_new_plugin_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``frameiod new-plugin`` to the CLI's subcommands."""
    new = commands.add_parser(
        "new-plugin", parents=[common], help="write a new plugin package to start from"
    )
    new.add_argument("name", metavar="NAME", help="the plugin's name, e.g. greeter")
    new.add_argument(
        "--dir",
        metavar="PATH",
        help="the new package's folder (default: ./frameiod-NAME); must not exist",
    )
    new.set_defaults(func=cmd_new_plugin)
