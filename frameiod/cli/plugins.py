"""``frameiod plugins``: what is installed, what each plugin handles, and why one failed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from frameiod.cli.common import EXIT_CONFIG, EXIT_OK, load_with_plugins
from frameiod.terminal import say

__all__ = ["add_plugins_command", "cmd_plugins"]


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the discovered plugins as text, JSON (``--json``) or pins (``--requirements``)."""
    loaded = load_with_plugins(args)
    if loaded is None:
        return EXIT_CONFIG
    infos = list(loaded[1].plugins.values())
    if args.requirements:
        # Only distributions: in-process plugins have nothing to pin.
        for pin in sorted({f"{i.distribution}=={i.version}" for i in infos if i.distribution}):
            say(pin)
    elif args.json:
        print(json.dumps([info.describe() for info in infos], indent=2))
    elif not infos:
        print("no plugins installed (pip install a frameiod-* package, or frameiod install NAME)")
    else:
        for info in infos:
            origin = f"{info.distribution} {info.version}" if info.distribution else "in-process"
            say(f"{info.name}  [{info.status}]  {origin}")
            if info.reason:
                say(f"  {info.reason}")
            for handler in info.handlers:
                types = ", ".join(handler.event_types)
                say(f"  handler {handler.name}: {types} (source {handler.source})")
            for action in info.actions:
                say(f"  action  {action.action}: {action.name} (source {action.source})")
    return EXIT_OK


def add_plugins_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``frameiod plugins`` to the CLI's subcommands."""
    plugins = commands.add_parser("plugins", parents=[common], help="list discovered plugins")
    output = plugins.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument(
        "--requirements",
        action="store_true",
        help="print installed plugin distributions in requirements format",
    )
    plugins.set_defaults(func=cmd_plugins)
