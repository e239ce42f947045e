"""The hooks around each call: frameiod's own implementations, and calling them.

``frameiod_call_handler``, ``frameiod_call_action`` and ``frameiod_receive`` are called
once per call through pluggy with every plugin's wrappers around frameiod's own
implementation (`CORE`, registered ``trylast`` by `make_plugin_manager` under the name
`CORE_NAME`). `Around` calls them, and only when some plugin wraps them: otherwise the
dispatcher, the action runner and the routes call the handler or the route directly.

A failure inside the wrapped call is told apart from a wrapper's own by identity: the
innermost coroutine notes the exception the handler (or route) raised; any other is a
wrapper's, and the traceback says whose (`_blame`).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from frameiod.logs import get_logger
from frameiod.plugins.handlers import (
    ActionHandler,
    HandlerTimeout,
    Reception,
    WebhookHandler,
)
from frameiod.plugins.hookspecs import hookimpl
from frameiod.plugins.runner import call_handler

__all__ = ["AROUND_HOOKS", "CORE", "CORE_NAME", "Around", "Route"]

log = get_logger("frameiod.plugins")

CORE_NAME = "frameiod"
"""The name frameiod's own implementations are registered under (never listed as a plugin)."""
AROUND_HOOKS = ("frameiod_call_handler", "frameiod_call_action", "frameiod_receive")

Route = Callable[[Reception], Awaitable[Any]]


@dataclass(slots=True)
class _Call:
    """One wrapped call: how to tell a deadline's cancel, and what the callee raised."""

    target: Any  # the route for frameiod_receive
    cut: Callable[[], bool] | None = None
    timeout: float = 0.0
    raised: BaseException | None = None


_CURRENT: contextvars.ContextVar[_Call] = contextvars.ContextVar("frameiod_around_call")


async def _innermost(call: _Call, start: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await start()
    except asyncio.CancelledError:
        if call.cut is None or not call.cut():
            raise
        # The deadline's cancel, taken back: wrappers see a timeout, not a cancel.
        call.raised = HandlerTimeout(f"no answer within {call.timeout:g}s")
        raise call.raised from None
    except BaseException as exc:
        call.raised = exc
        raise


class _Core:
    """frameiod's own implementations of the hooks around each call: the innermost call."""

    @hookimpl(trylast=True)
    def frameiod_call_handler(self, event: Any, handler: WebhookHandler) -> Awaitable[Any]:
        """Call the handler (not before the awaitable is awaited)."""
        call = _CURRENT.get()
        return _innermost(call, lambda: call_handler(handler.func, event))

    @hookimpl(trylast=True)
    def frameiod_call_action(self, event: Any, handler: ActionHandler) -> Awaitable[Any]:
        """Call the action's handler (not before the awaitable is awaited)."""
        call = _CURRENT.get()
        return _innermost(call, lambda: call_handler(handler.func, event))

    @hookimpl(trylast=True)
    def frameiod_receive(self, reception: Reception) -> Awaitable[Any]:
        """Run the route."""
        call = _CURRENT.get()
        return _innermost(call, lambda: call.target(reception))


CORE = _Core()


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every function or coroutine defined inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _impl_codes(function: Any) -> set[types.CodeType]:
    """The code a wrapper runs: its function and what is defined in it, and for a method,
    every method of its class (helpers it calls)."""
    functions = [getattr(function, "__func__", function)]
    owner = getattr(function, "__self__", None)
    if owner is not None:
        functions += [
            value
            for cls in type(owner).__mro__
            for value in vars(cls).values()
            if isinstance(value, types.FunctionType)
        ]
    return {code for func in functions for code in _codes(func.__code__)}


class Around:
    """Calls the hooks around each call, for one set of registered plugins."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self.wrapped = {
            hook: any(
                impl.wrapper or impl.hookwrapper or impl.plugin_name != CORE_NAME
                for impl in getattr(pm.hook, hook).get_hookimpls()
            )
            for hook in AROUND_HOOKS
        }
        """Whether any plugin implements each hook (else it is not worth calling)."""
        self._code_owners: dict[types.CodeType, list[tuple[object, str]]] = {}
        self._packages: dict[str, set[str]] = {}
        for hook in AROUND_HOOKS:
            for impl in getattr(pm.hook, hook).get_hookimpls():
                if impl.plugin_name == CORE_NAME:
                    continue
                package = _package(impl.function.__module__)
                if package != "frameiod":  # an App's middleware: its code is found above
                    self._packages.setdefault(package, set()).add(impl.plugin_name)
                owner = getattr(impl.function, "__self__", impl.plugin)
                for code in _impl_codes(impl.function):
                    owners = self._code_owners.setdefault(code, [])
                    if (owner, impl.plugin_name) not in owners:
                        owners.append((owner, impl.plugin_name))

    async def call_handler(
        self,
        event: Any,
        handler: WebhookHandler,
        attempt: int,
        trace_context: str | None,
        *,
        cut: Callable[[], bool],
        limit: float,
    ) -> Any:
        """Call ``handler`` through ``frameiod_call_handler``; ``cut`` takes back the
        deadline's cancel (True if it was the deadline's, ``limit`` seconds). Raises what
        the handler or a wrapper raised (`HandlerTimeout` past the deadline)."""
        call = _Call(None, cut, limit)
        return await self._run(
            call,
            "frameiod_call_handler",
            {
                "event": event,
                "handler": handler,
                "attempt": attempt,
                "trace_context": trace_context,
            },
            handler=handler.key,
        )

    async def call_action(self, event: Any, handler: ActionHandler) -> Any:
        """Call ``handler`` through ``frameiod_call_action``; its answer."""
        call = _Call(None)
        return await self._run(
            call,
            "frameiod_call_action",
            {"event": event, "handler": handler},
            action=handler.action,
        )

    async def receive(self, reception: Reception, route: Route) -> Any:
        """Answer one request through ``frameiod_receive``, ``route`` innermost."""
        call = _Call(route)
        return await self._run(call, "frameiod_receive", {"reception": reception})

    async def _run(self, call: _Call, hook: str, kwargs: dict[str, Any], **fields: Any) -> Any:
        token = _CURRENT.set(call)
        try:
            try:
                awaitable = getattr(self._pm.hook, hook)(**kwargs)
            finally:
                _CURRENT.reset(token)
            return await awaitable
        except BaseException as exc:
            if exc is not call.raised and not isinstance(exc, asyncio.CancelledError):
                log.error(
                    f"{hook.removeprefix('frameiod_call_').removeprefix('frameiod_')} "
                    "wrapper failed",
                    plugin=self._blame(exc),
                    hook=hook,
                    error=f"{type(exc).__name__}: {exc}",
                    **fields,
                )
            raise

    def _blame(self, exc: BaseException) -> str:
        """The plugin whose wrapper raised ``exc``: the innermost frame of its traceback
        that runs a wrapper's code (or a function defined in it); failing that, the
        innermost in the package a wrapper comes from (a helper class's coroutine)."""
        frames = [frame for frame, _ in traceback_frames(exc)]
        return self._blame_code(frames) or self._blame_package(frames) or "unknown"

    def _blame_package(self, frames: list[types.FrameType]) -> str | None:
        for frame in reversed(frames):
            names = self._packages.get(_package(frame.f_globals.get("__name__", "")))
            if names:
                return ",".join(sorted(names))
        return None

    def _blame_code(self, frames: list[types.FrameType]) -> str | None:
        for frame in reversed(frames):
            owners = self._code_owners.get(frame.f_code)
            if not owners:
                continue
            if len(owners) == 1:
                return owners[0][1]
            this = frame.f_locals.get("self")
            for plugin, name in owners:
                if plugin is this:
                    return name
            return ",".join(name for _, name in owners)
        return None


def _package(module: str) -> str:
    return module.partition(".")[0]


def traceback_frames(exc: BaseException) -> Iterator[tuple[types.FrameType, int]]:
    """The frames of ``exc``'s traceback, outermost first."""
    tb = exc.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next
