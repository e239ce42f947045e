"""The daemon's plugins: adopted from the plugin manager, configured, started, and called.

A plugin that cannot be registered, offer its handlers, or start is recorded as failed
with its reason, and the daemon goes on with the others. Every hook is called through
pluggy (`frameiod.plugins.calls`): each plugin's own through its subset caller, so one
plugin's failure is its own; observers in pluggy's order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pluggy
import structlog
from pydantic import ValidationError

from frameiod.config import Config, ConfigError, validation_problems
from frameiod.logs import get_logger
from frameiod.patterns import pattern_problem
from frameiod.plugins.around import CORE_NAME, Around
from frameiod.plugins.calls import HookCalls
from frameiod.plugins.handlers import ActionHandler, PluginContext, WebhookHandler
from frameiod.plugins.manager import (
    ALLOW_ENV,
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginManager,
    make_plugin_manager,
    one_line,
    report,
)
from frameiod.plugins.routing import Routes
from frameiod.plugins.runner import maybe_await

__all__ = [
    "ALLOW_ENV",
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "make_plugin_manager",
]

log = get_logger("frameiod.plugins")


def _owned_action(action: object, plugin: str) -> ActionHandler:
    if not isinstance(action, ActionHandler):
        raise TypeError(f"frameiod_action_handlers returned {action!r}, not an ActionHandler")
    return dataclasses.replace(action, plugin=plugin)


def _owned(handler: object, plugin: str) -> WebhookHandler:
    if not isinstance(handler, WebhookHandler):
        raise TypeError(f"frameiod_webhook_handlers returned {handler!r}, not a WebhookHandler")
    return dataclasses.replace(handler, plugin=plugin)


class PluginHost:
    """The daemon's plugins: those registered on ``pm``, configured, started, and called.

    Build the manager with `make_plugin_manager` (tests: ``load_entrypoints=False``, then
    ``pm.register(Plugin(), name="t")`` or `add`).
    """

    def __init__(self, pm: PluginManager) -> None:
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self._started: list[str] = []
        self._contexts: dict[str, PluginContext] = {}
        self._calls = HookCalls(pm)
        # What discovery found first (in its order), then what was registered directly.
        for name, found in pm.found.items():
            plugin = pm.get_plugin(name) if found.status == "loaded" else None
            if plugin is not None:
                self._adopt(found, plugin)
            elif found.status != "loaded":
                self.plugins[name] = found
        for name, plugin in pm.list_name_plugin():
            if plugin is not None and name not in self.plugins and name != CORE_NAME:
                self._adopt(PluginInfo(name=name), plugin)

    def add(self, plugin: object, name: str, distribution: str | None = None) -> PluginInfo:
        """Register an in-process plugin object (a module, an `App`, any object with hooks)."""
        info = PluginInfo(name=name, distribution=distribution)
        reason = self.pm.block_reason(name)
        if reason is not None:
            info.status, info.reason = "disabled", reason
            self.plugins[name] = info
            report(info)
            return info
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.plugins[name] = info
            self._fail(info, one_line(exc), exc)
            return info
        self._adopt(info, plugin)
        return info

    def _adopt(self, info: PluginInfo, plugin: object) -> None:
        """Check a registered plugin and collect what it offers; fail it if that fails."""
        self.plugins[info.name] = info
        self._calls = HookCalls(self.pm)  # a new set of plugins
        try:
            unknown = [
                hook for hook in self.pm.get_hookcallers(plugin) or [] if not hook.has_spec()
            ]
            if unknown:
                raise pluggy.PluginValidationError(
                    plugin, f"implements unknown hook(s): {', '.join(h.name for h in unknown)}"
                )
            # Collected now, so a broken frameiod_webhook_handlers is a load failure.
            offered = self._calls.one(info.name, "frameiod_webhook_handlers")
            info.handlers = [_owned(handler, info.name) for handler in offered or []]
            names = [handler.name for handler in info.handlers]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                # Names label logs and metrics; two handlers under one name would merge.
                raise ValueError(f"two handlers are named {', '.join(twice)}; pass name=...")
            offered = self._calls.one(info.name, "frameiod_action_handlers")
            info.actions = [_owned_action(action, info.name) for action in offered or []]
        except Exception as exc:
            self._fail(info, one_line(exc), exc)
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
            self._calls = HookCalls(self.pm)  # a new set of plugins
        report(info, exc)

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
                model = self._calls.one(name, "frameiod_plugin_config_model")
            except Exception as exc:
                self._fail(info, f"frameiod_plugin_config_model raised {one_line(exc)}", exc)
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
                await maybe_await(self._calls.one(name, "frameiod_startup", context=context))
            except Exception as exc:
                self._fail(info, f"frameiod_startup raised {one_line(exc)}", exc)
                continue
            self._contexts[name] = context
            self._started.append(name)

    async def shutdown(self) -> None:
        """Await ``frameiod_shutdown`` of every started plugin, in reverse order."""
        for name in reversed(self._started):
            try:
                await maybe_await(
                    self._calls.one(name, "frameiod_shutdown", context=self._contexts[name])
                )
            except Exception:
                log.exception("plugin shutdown failed", plugin=name)
        self._started.clear()

    def around(self) -> Around | None:
        """The hooks around each call, or None when no loaded plugin implements any of
        them (then handlers and routes are called directly, at no cost)."""
        around = Around(self.pm)
        return around if any(around.wrapped.values()) else None

    def observes(self, hook: str) -> bool:
        """Whether any loaded plugin implements the observer ``hook`` (a wrapper counts)."""
        return self._calls.implemented(hook)

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin, through pluggy and in its order; await
        the ``async def`` ones together; each failure is logged, none passed on."""
        await self._calls.notify(hook, **kwargs)
