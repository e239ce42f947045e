"""The plugin manager: frameiod's hookspecs, blocked names, and the plugins entry points offer.

`make_plugin_manager` builds a fresh one per daemon, command or test (never a module
global). An entry point that cannot be imported or registered is recorded with its reason
and the others load; a blocked name (``[plugins] disable``, or outside
``$FRAMEIOD_PLUGINS``) is blocked in pluggy, so nothing of that name is ever registered.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
from pydantic import BaseModel

from frameiod.logs import get_logger
from frameiod.plugins import hookspecs
from frameiod.plugins.around import CORE, CORE_NAME
from frameiod.plugins.handlers import ActionHandler, WebhookHandler

__all__ = [
    "ALLOW_ENV",
    "DISABLED",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "make_plugin_manager",
    "one_line",
    "report",
]

ENTRY_POINT_GROUP = "frameiod.plugins"
ALLOW_ENV = "FRAMEIOD_PLUGINS"
DISABLED = "listed in [plugins] disable"

log = get_logger("frameiod.plugins")

Status = Literal["loaded", "disabled", "failed"]


@dataclass
class PluginInfo:
    """What ``frameiod plugins`` shows about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: Status = "loaded"
    reason: str | None = None
    handlers: list[WebhookHandler] = field(default_factory=list)
    actions: list[ActionHandler] = field(default_factory=list)
    config: BaseModel | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (no secrets)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "handlers": [handler.describe() for handler in self.handlers],
            "actions": [action.describe() for action in self.actions],
        }


def report(info: PluginInfo, exc: BaseException | None = None) -> None:
    """Log a plugin that was disabled or failed, with the reason (and the traceback)."""
    if info.status == "disabled":
        log.info("plugin disabled", plugin=info.name, reason=info.reason)
    elif info.status == "failed":
        log.error(
            "plugin failed",
            plugin=info.name,
            reason=info.reason,
            traceback="".join(traceback.format_exception(exc)) if exc else None,
        )


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(exc).__name__}: {exc}"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``frameiod`` project, with every hookspec added.

    It also keeps what entry-point discovery found (`found`): the plugins it registered,
    with their distribution, and those it did not (disabled or failed), with the reason,
    so ``frameiod plugins`` can list them all.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        # frameiod's own implementations of the hooks around each call, innermost.
        self.register(CORE, name=CORE_NAME)
        self.found: dict[str, PluginInfo] = {}
        self._block_reasons: dict[str, str] = {}

    def block(self, name: str, reason: str) -> None:
        """Block ``name`` in pluggy: a plugin of that name is never registered."""
        self.set_blocked(name)
        self._block_reasons.setdefault(name, reason)

    def block_reason(self, name: str) -> str | None:
        """Why ``name`` is blocked, or None when it is not."""
        if not self.is_blocked(name):
            return None
        return self._block_reasons.get(name, "blocked")

    def record(self, info: PluginInfo, exc: BaseException | None = None) -> None:
        """Keep ``info`` in `found` and log its status."""
        self.found[info.name] = info
        report(info, exc)


def _allow_list(environ: Mapping[str, str]) -> set[str] | None:
    if ALLOW_ENV not in environ:
        return None
    return {name.strip() for name in environ[ALLOW_ENV].split(",") if name.strip()}


def make_plugin_manager(
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> PluginManager:
    """A fresh plugin manager that knows every frameiod hookspec.

    ``blocked`` names (the config's ``[plugins] disable``) are blocked in pluggy, so no
    plugin of that name is registered, from an entry point or otherwise. With
    ``load_entrypoints``, every ``frameiod.plugins`` entry point (or those given as
    ``entry_points``) that is neither blocked nor outside ``$FRAMEIOD_PLUGINS`` (read
    from ``environ``, default the process environment) is imported and registered under
    its name. Tests pass ``load_entrypoints=False`` and register in-test plugin objects.
    """
    pm = PluginManager()
    for name in blocked:
        pm.block(name, DISABLED)
    if load_entrypoints:
        _load_entry_points(pm, os.environ if environ is None else environ, entry_points)
    return pm


def _load_entry_points(
    pm: PluginManager,
    environ: Mapping[str, str],
    entry_points: Iterable[importlib.metadata.EntryPoint] | None,
) -> None:
    allowed = _allow_list(environ)
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(entry_points, key=lambda ep: ep.name):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        if ep.name in pm.found:
            first = pm.found[ep.name].distribution
            # Listed under its own name too: the operator has to uninstall one of them.
            info.name = f"{ep.name} ({info.distribution})"
            info.status, info.reason = (
                "failed",
                (f"another plugin is already named {ep.name!r} (from {first})"),
            )
            pm.record(info)
            continue
        if allowed is not None and ep.name not in allowed:
            pm.block(ep.name, f"not in ${ALLOW_ENV}")
        reason = pm.block_reason(ep.name)
        if reason is not None:
            info.status, info.reason = "disabled", reason
            pm.record(info)
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:
            info.status, info.reason = "failed", f"cannot import {ep.value}: {one_line(exc)}"
            pm.record(info, exc)
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            info.status, info.reason = "failed", one_line(exc)
            pm.record(info, exc)
            continue
        pm.found[ep.name] = info
