"""What every ``frameiod`` command shares: its exit statuses, and loading the config and
the plugins with every problem printed, one line each, to stderr."""

from __future__ import annotations

import argparse
import sys

from frameiod.config import Config, ConfigError, find_config, load_config
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.terminal import say

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "load",
    "load_plugins",
    "load_with_plugins",
    "report",
]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def report(error: ConfigError) -> None:
    """Print each problem of ``error`` on a line of its own to stderr."""
    for problem in error.problems:
        say(problem, file=sys.stderr)


def load(args: argparse.Namespace) -> Config | None:
    """The config ``--config`` names (or the default one); None after printing why not."""
    try:
        return load_config(find_config(args.config))
    except ConfigError as exc:
        report(exc)
        return None


def load_plugins(config: Config) -> PluginHost | None:
    """Discover the plugins and validate their config; None (after printing why) on errors."""
    host = PluginHost(make_plugin_manager(blocked=config.plugins.disable))
    try:
        warnings = host.configure(config)
    except ConfigError as exc:
        report(exc)
        return None
    for warning in warnings:
        say(f"warning: {warning}", file=sys.stderr)
    try:
        host.routes()  # two plugins answering one custom action
    except ConfigError as exc:
        report(exc)
        return None
    return host


def load_with_plugins(args: argparse.Namespace) -> tuple[Config, PluginHost] | None:
    """The config and its configured plugins; None after printing why either failed."""
    config = load(args)
    plugins = load_plugins(config) if config is not None else None
    return (config, plugins) if config is not None and plugins is not None else None
