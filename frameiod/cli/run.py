"""``frameiod run`` (the daemon in the foreground) and ``frameiod check`` (what it would
run with, and whether it can)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from frameiod.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    load,
    load_plugins,
    load_with_plugins,
)
from frameiod.config import format_duration
from frameiod.terminal import plural, say

__all__ = ["add_run_commands", "cmd_check", "cmd_run"]


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until it is stopped; its exit status."""
    # Only the daemon needs these: `check` and `--version` start without them.
    from frameiod import idle
    from frameiod.logs import configure_logging
    from frameiod.service import serve

    config = load(args)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log.level, config.log.format, cache=True)
    plugins = load_plugins(config)
    if plugins is None:
        return EXIT_CONFIG
    # The spool hands its writes over when this loop runs out of work (`frameiod.idle`).
    with asyncio.Runner(loop_factory=idle.new_event_loop) as runner:
        return runner.run(serve(config, plugins))


def cmd_check(args: argparse.Namespace) -> int:
    """Print what the config and the plugins set up, and end with "ok" or "problems
    found": 2 when the config (or a plugin's) is wrong, 1 when a plugin failed to load."""
    loaded = load_with_plugins(args)
    if loaded is None:
        say("problems found", file=sys.stderr)
        return EXIT_CONFIG
    config, plugins = loaded
    failed = [info.name for info in plugins.plugins.values() if info.status == "failed"]
    server = config.server
    say(f"{config.path}:" + ("" if failed else " ok"))
    say(f"  listen  {server.host}:{server.port} (bodies up to {server.max_body_bytes} bytes)")
    for name, source in sorted(config.sources.items()):
        refs = ", ".join(secret.reference for secret in source.secrets)
        say(
            f"  source  {name}: POST /webhooks/{name}, {plural(len(source.secrets), 'secret')} "
            f"({refs}), tolerance {format_duration(source.tolerance)}"
        )
    spool = config.spool
    if spool.backend == "redis":
        # The reference, not the URL: it may carry a password.
        say(f"  spool   redis ({spool.redis_url.reference}), keys {spool.stream_prefix}:*")
    else:
        where = config.resolve_path(spool.path)
        say(f"  spool   sqlite {where} (synchronous {spool.synchronous})")
    say(f"  log     {config.log.level}, {config.log.format}")
    for info in plugins.plugins.values():
        say(f"  plugin  {info.name}: {info.status}" + (f" ({info.reason})" if info.reason else ""))
    if failed:
        names = ", ".join(failed)
        say(f"problems found: {plural(len(failed), 'plugin')} failed to load ({names})")
        return EXIT_FAILED
    return EXIT_OK


def add_run_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``frameiod run`` and ``frameiod check`` to the CLI's subcommands."""
    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.set_defaults(func=cmd_run)
    check = commands.add_parser(
        "check", parents=[common], help="validate the config and resolve its secrets"
    )
    check.set_defaults(func=cmd_check)
