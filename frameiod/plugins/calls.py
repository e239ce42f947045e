"""Calling hooks through pluggy, one plugin at a time where a failure must stay that plugin's.

pluggy runs a hook's implementations in its documented order (``tryfirst`` first,
``trylast`` last, otherwise the last registered first), around them the ``wrapper=True``
implementations, and stops at the first exception. So that one plugin's failure is its
own, each plugin is called through its own `pluggy.PluginManager.subset_hook_caller`: the
whole hook minus the other plugins' plain implementations, every wrapper kept. The
callers are built once for a set of plugins (`HookCalls`), never per event.

An implementation may be ``def`` or ``async def``: what a call returns is awaited when it
is awaitable. Observers (``frameiod_event_accepted``, ``frameiod_delivery_finished``) are
called in pluggy's order; their coroutines are then awaited together, each failure
logged with its plugin's name and none passed on.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import Any

import pluggy

from frameiod.logs import get_logger

__all__ = ["HookCalls"]

log = get_logger("frameiod.plugins")

Caller = pluggy.HookCaller


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


class HookCalls:
    """pluggy's callers for one set of registered plugins; build a new one when it changes."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._alone: dict[tuple[str, str], Caller | None] = {}
        self._observers: dict[str, tuple[tuple[str, Caller], ...]] = {}

    def _plain(self, hook: str) -> list[pluggy.HookImpl]:
        """The plain (not wrapper) implementations of ``hook``, in the order pluggy calls
        them: it calls `get_hookimpls` from the last one to the first."""
        impls = getattr(self._pm.hook, hook).get_hookimpls()
        return [impl for impl in reversed(impls) if not _is_wrapper(impl)]

    def alone(self, name: str, hook: str) -> Caller | None:
        """The caller of ``hook`` for plugin ``name`` only (with every wrapper around it),
        or None when that plugin does not implement it."""
        key = (name, hook)
        if key not in self._alone:
            plain = self._plain(hook)
            others = [impl.plugin for impl in plain if impl.plugin_name != name]
            mine = len(others) < len(plain)
            self._alone[key] = self._pm.subset_hook_caller(hook, others) if mine else None
        return self._alone[key]

    def one(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call plugin ``name``'s ``hook`` (through its wrappers); its return value, or None
        when it does not implement the hook. Its exception is raised here."""
        caller = self.alone(name, hook)
        if caller is None:
            return None
        results = caller(**kwargs)
        return results[0] if results else None

    def implemented(self, hook: str) -> bool:
        """Whether any plugin implements ``hook`` (a wrapper counts: it watches the call)."""
        return bool(getattr(self._pm.hook, hook).get_hookimpls())

    def _observer_callers(self, hook: str) -> tuple[tuple[str, Caller], ...]:
        callers = self._observers.get(hook)
        if callers is None:
            plain = self._plain(hook)
            if plain:
                callers = tuple(
                    (impl.plugin_name, caller)
                    for impl in plain
                    if (caller := self.alone(impl.plugin_name, hook)) is not None
                )
            else:  # wrappers only: they still see the call, once
                impls = getattr(self._pm.hook, hook).get_hookimpls()
                names = ",".join(impl.plugin_name for impl in impls)
                callers = ((names, getattr(self._pm.hook, hook)),) if impls else ()
            self._observers[hook] = callers
        return callers

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call observer ``hook`` on every plugin, in pluggy's order, then await the
        coroutines of ``async def`` ones together; log each failure, pass none on."""
        pending: list[tuple[str, Awaitable[Any]]] = []
        for name, caller in self._observer_callers(hook):
            try:
                results = caller(**kwargs)
            except Exception:
                log.exception("observer hook failed", plugin=name, hook=hook)
                continue
            pending.extend((name, result) for result in results if inspect.isawaitable(result))
        if len(pending) == 1:
            await _observed(*pending[0], hook)
        elif pending:
            await asyncio.gather(*(_observed(name, result, hook) for name, result in pending))


async def _observed(name: str, result: Awaitable[Any], hook: str) -> None:
    try:
        await result
    except Exception:
        log.exception("observer hook failed", plugin=name, hook=hook)
