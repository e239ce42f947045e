"""Finding, loading and running plugins: entry points, config, lifecycle, observers.

A plugin that cannot be imported, registered, or started is recorded as failed with its
reason, and the daemon goes on with the others. Every hook implementation is called on
its own, inside its own ``try`` (pluggy's own calling loop would stop at the first
exception), and whatever it returns is awaited if it is awaitable.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
import structlog
from pydantic import BaseModel, ValidationError

from frameiod.config import Config, ConfigError, validation_problems
from frameiod.logs import get_logger
from frameiod.plugins import hookspecs
from frameiod.plugins.handlers import (
    ActionHandler,
    PluginContext,
    Routes,
    WebhookHandler,
    maybe_await,
    pattern_problem,
)

__all__ = [
    "ALLOW_ENV",
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "make_plugin_manager",
]

ENTRY_POINT_GROUP = "frameiod.plugins"
ALLOW_ENV = "FRAMEIOD_PLUGINS"

log = get_logger("frameiod.plugins")

Status = Literal["loaded", "disabled", "failed"]


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows every frameiod hookspec (one per daemon or test)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _allow_list(environ: Mapping[str, str]) -> set[str] | None:
    if ALLOW_ENV not in environ:
        return None
    return {name.strip() for name in environ[ALLOW_ENV].split(",") if name.strip()}


def _owned_action(action: object, plugin: str) -> ActionHandler:
    if not isinstance(action, ActionHandler):
        raise TypeError(f"frameiod_action_handlers returned {action!r}, not an ActionHandler")
    return dataclasses.replace(action, plugin=plugin)


def _owned(handler: object, plugin: str) -> WebhookHandler:
    if not isinstance(handler, WebhookHandler):
        raise TypeError(f"frameiod_webhook_handlers returned {handler!r}, not a WebhookHandler")
    return dataclasses.replace(handler, plugin=plugin)


class PluginHost:
    """The daemon's plugins: discovered, configured, started, and called.

    Tests build one with ``load_entrypoints=False`` and `add` in-test plugin objects.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or make_plugin_manager()
        self.plugins: dict[str, PluginInfo] = {}
        self._started: list[str] = []
        self._contexts: dict[str, PluginContext] = {}

    # --- discovery ---------------------------------------------------------------

    def discover(
        self,
        disabled: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        """Load every ``frameiod.plugins`` entry point that is not disabled or filtered out
        by ``$FRAMEIOD_PLUGINS``; record each one's status."""
        environ = os.environ if environ is None else environ
        allowed = _allow_list(environ)
        disabled = set(disabled)
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=lambda ep: ep.name):
            dist = ep.dist
            info = PluginInfo(
                name=ep.name,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            if ep.name in self.plugins:
                first = self.plugins[ep.name].distribution
                # Listed under its own name too: the operator has to uninstall one of them.
                info.name = f"{ep.name} ({info.distribution})"
                self._fail(info, f"another plugin is already named {ep.name!r} (from {first})")
            elif ep.name in disabled:
                self._disable(info, "listed in [plugins] disable")
            elif allowed is not None and ep.name not in allowed:
                self._disable(info, f"not in ${ALLOW_ENV}")
            else:
                try:
                    plugin = ep.load()
                except (Exception, SystemExit) as exc:
                    self._fail(info, f"cannot import {ep.value}: {_one_line(exc)}", exc)
                else:
                    self._register(info, plugin)

    def _disable(self, info: PluginInfo, reason: str) -> None:
        info.status, info.reason = "disabled", reason
        self.plugins[info.name] = info
        log.info("plugin disabled", plugin=info.name, reason=reason)

    def add(self, plugin: object, name: str, distribution: str | None = None) -> PluginInfo:
        """Register an in-process plugin object (a module, an `App`, any object with hooks)."""
        info = PluginInfo(name=name, distribution=distribution)
        self._register(info, plugin)
        return info

    def _register(self, info: PluginInfo, plugin: object) -> None:
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
            unknown = [
                hook for hook in self.pm.get_hookcallers(plugin) or [] if not hook.has_spec()
            ]
            if unknown:
                raise pluggy.PluginValidationError(
                    plugin, f"implements unknown hook(s): {', '.join(h.name for h in unknown)}"
                )
            # Collected now, so a broken frameiod_webhook_handlers is a load failure.
            info.handlers = [
                _owned(handler, info.name)
                for handler in self._call(info.name, "frameiod_webhook_handlers") or []
            ]
            names = [handler.name for handler in info.handlers]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                # Names label logs and metrics; two handlers under one name would merge.
                raise ValueError(f"two handlers are named {', '.join(twice)}; pass name=...")
            info.actions = [
                _owned_action(action, info.name)
                for action in self._call(info.name, "frameiod_action_handlers") or []
            ]
        except Exception as exc:
            self._fail(info, _one_line(exc), exc)
            return
        for handler in info.handlers:
            for pattern in handler.event_types:
                problem = pattern_problem(pattern)
                if problem:
                    log.warning(
                        "handler subscribes to an unknown event type",
                        plugin=info.name,
                        handler=handler.name,
                        problem=problem,
                    )
        log.info(
            "plugin loaded",
            plugin=info.name,
            version=info.version,
            handlers=[handler.name for handler in info.handlers],
            actions=[action.action for action in info.actions],
        )

    def _fail(self, info: PluginInfo, reason: str, exc: BaseException | None = None) -> None:
        info.status, info.reason, info.handlers, info.actions = "failed", reason, [], []
        self.plugins[info.name] = info
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        log.error(
            "plugin failed",
            plugin=info.name,
            reason=reason,
            traceback="".join(traceback.format_exception(exc)) if exc else None,
        )

    def _impl(self, name: str, hook: str) -> pluggy.HookImpl | None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                return impl
        return None

    def _call(self, name: str, hook: str, **kwargs: Any) -> Any:
        impl = self._impl(name, hook)
        if impl is None:
            return None
        return impl.function(*[kwargs[arg] for arg in impl.argnames])

    @property
    def loaded(self) -> list[str]:
        """Names of the plugins that are loaded, in registration order."""
        return [name for name, info in self.plugins.items() if info.status == "loaded"]

    # --- configuration ----------------------------------------------------------

    def configure(self, config: Config, *, apply: bool = True) -> list[str]:
        """Validate each loaded plugin's ``[plugins.<name>]`` table against its model and,
        with ``apply``, keep the result for its start-up (a reload only validates).

        Returns warnings (tables for plugins that are not installed); raises `ConfigError`
        listing every problem, as the core config does.
        """
        problems: list[str] = []
        tables = config.plugins.tables
        for name in self.loaded:
            info = self.plugins[name]
            try:
                model = self._call(name, "frameiod_plugin_config_model")
            except Exception as exc:
                self._fail(info, f"frameiod_plugin_config_model raised {_one_line(exc)}", exc)
                continue
            table = tables.get(name)
            if model is None:
                if table is not None:
                    problems.append(
                        f"{config.path}: plugins.{name}: the {name} plugin takes no settings"
                    )
                continue
            try:
                validated = config.validate_table(model, table or {})
            except ValidationError as exc:
                problems.extend(validation_problems(config.path, model, exc, ("plugins", name)))
                continue
            if apply:
                info.config = validated
        if problems:
            raise ConfigError(problems)
        return [
            f"{config.path}: plugins.{name}: no plugin named {name!r} is installed"
            for name in tables
            if name not in self.plugins
        ]

    # --- lifecycle ------------------------------------------------------------------

    def routes(self) -> Routes:
        """Routing over the handlers of every loaded plugin.

        Raises `ConfigError` when two plugins handle the same custom action on one source:
        which one should answer cannot be guessed.
        """
        owners: dict[tuple[str, str], str] = {}
        problems = []
        for name in self.loaded:
            for action in self.plugins[name].actions:
                key = (action.source, action.action)
                if key in owners:
                    problems.append(
                        f"custom action {action.action!r} (source {action.source!r}) is "
                        f"handled by both plugin {owners[key]!r} and plugin {name!r}; "
                        "disable one of them in [plugins] disable"
                    )
                owners.setdefault(key, name)
        if problems:
            raise ConfigError(problems)
        return Routes(
            (handler for name in self.loaded for handler in self.plugins[name].handlers),
            (action for name in self.loaded for action in self.plugins[name].actions),
        )

    async def startup(self, config: Config, client: Any | None = None) -> None:
        """Await each loaded plugin's ``frameiod_startup``; a plugin that raises is failed."""
        for name in self.loaded:
            info = self.plugins[name]
            context = PluginContext(
                name=name,
                config=config,
                plugin_config=info.config,
                log=structlog.get_logger("frameiod.plugin").bind(plugin=name),
                client=client,
            )
            try:
                await maybe_await(self._call(name, "frameiod_startup", context=context))
            except Exception as exc:
                self._fail(info, f"frameiod_startup raised {_one_line(exc)}", exc)
                continue
            self._contexts[name] = context
            self._started.append(name)

    async def shutdown(self) -> None:
        """Await ``frameiod_shutdown`` of every started plugin, in reverse order."""
        for name in reversed(self._started):
            try:
                await maybe_await(
                    self._call(name, "frameiod_shutdown", context=self._contexts[name])
                )
            except Exception:
                log.exception("plugin shutdown failed", plugin=name)
        self._started.clear()

    def observes(self, hook: str) -> bool:
        """Whether any loaded plugin implements the observer ``hook``."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin; each failure is logged, none passed on."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                await maybe_await(impl.function(*[kwargs[arg] for arg in impl.argnames]))
            except Exception:
                log.exception("observer hook failed", plugin=impl.plugin_name, hook=hook)
