"""The ``frameiod`` command: run, check, send, plugins, queue, webhooks, actions, install,
uninstall, --version. Each command group lives in a module of its own; this one builds
the parser from them and runs the chosen command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from frameiod import __version__
from frameiod.cli.common import EXIT_CONFIG, EXIT_FAILED, load
from frameiod.cli.install import add_install_commands, refused_options
from frameiod.cli.new_plugin import add_new_plugin_command
from frameiod.cli.plugins import add_plugins_command
from frameiod.cli.queue import add_queue_commands, run_queue
from frameiod.cli.registration import add_registration_commands
from frameiod.cli.run import add_run_commands, cmd_run
from frameiod.cli.send import add_send_command
from frameiod.config.loading import CONFIG_VARIABLE

__all__ = ["build_parser", "main"]


def _cmd_queue(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return EXIT_CONFIG
    return run_queue(args, config)


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a level where --config is not given sets nothing, so a subcommand's parser
    # cannot overwrite what a level above it parsed (argparse copies a subparser's
    # defaults over its parent's values).
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=(
            f"config file (default: ${CONFIG_VARIABLE}, then ./config.toml, then "
            "/etc/frameiod/config.toml); before or after the command"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``frameiod`` command's argument parser, every subcommand included."""
    common = argparse.ArgumentParser(add_help=False)
    _add_config_option(common)
    parser = argparse.ArgumentParser(
        prog="frameiod", description="Receive, verify and dispatch Frame.io webhooks."
    )
    parser.add_argument("--version", action="version", version=f"frameiod {__version__}")
    _add_config_option(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_commands(commands, common)
    add_send_command(commands, common)
    add_plugins_command(commands, common)
    groups = [add_queue_commands(commands, common), *add_registration_commands(commands, common)]
    groups[0].set_defaults(func=_cmd_queue)
    add_install_commands(commands, common)
    add_new_plugin_command(commands, common)
    # `frameiod queue --config X stats`: the groups take it between group and verb too.
    for group in groups:
        _add_config_option(group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``frameiod`` command; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    if unknown:
        refusal = refused_options(args, unknown)
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return EXIT_CONFIG
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.func is not cmd_run:
        from frameiod.logs import configure_logging

        # stdout is the command's output (JSON for --json); warnings such as a plugin that
        # failed to load, with its traceback, go to stderr.
        configure_logging("warning", "auto", stream=sys.stderr)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`frameiod plugins --json | head`): not an error of ours to
        # print a traceback for. Python flushes stdout again at exit, and would fail again
        # on the closed pipe, so stdout is pointed at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
