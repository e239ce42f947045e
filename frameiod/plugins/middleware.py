"""`Middleware`: frameio-kit's shape of a wrapper around an `App`'s handlers.

    class Timing(Middleware):
        async def on_webhook(self, event, next):
            started = time.perf_counter()
            try:
                return await next(event)
            finally:
                print(event.type, time.perf_counter() - started)

    app = App(middleware=[Timing()])

`App(middleware=[...])` wraps its own handlers' calls in the objects given, the first one
outermost, through the ``frameiod_call_handler`` and ``frameiod_call_action`` hooks
(`MiddlewareChain`): a middleware sees the event, calls ``next(event)`` for the rest of the
chain and the handler, and gets the handler's result or exception. One that does not call
``next`` stops the call there: the handler does not run, and what it returns is the
result.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

from frameiod.events import ActionEvent, WebhookEvent
from frameiod.plugins.handlers import ActionHandler, WebhookHandler
from frameiod.plugins.hookspecs import hookimpl

__all__ = ["Middleware", "MiddlewareChain", "Next"]

Next = Callable[[Any], Awaitable[Any]]
"""What a middleware calls to run the rest of the chain and the handler."""


class Middleware:
    """A base for middleware: override `on_webhook`, `on_action`, or `__call__` for both.

    ``next(event)`` runs the rest: give it the event you got (the handler gets the event
    frameiod delivered).
    """

    async def __call__(self, event: WebhookEvent | ActionEvent, next: Next) -> Any:
        """Called for every event, webhook or action: runs `on_webhook` or `on_action`."""
        if isinstance(event, ActionEvent):
            return await self.on_action(event, next)
        return await self.on_webhook(event, next)

    async def on_webhook(self, event: WebhookEvent, next: Next) -> Any:
        """Called around each webhook handler call (each attempt); by default, just runs it."""
        return await next(event)

    async def on_action(self, event: ActionEvent, next: Next) -> Any:
        """Called around each custom-action handler call; by default, just runs it."""
        return await next(event)


class MiddlewareChain:
    """The hook wrappers an `App` with middleware registers: its own handlers only."""

    def __init__(self, middleware: Sequence[Any], funcs: Callable[[], set[int]]) -> None:
        self._middleware = tuple(middleware)
        self._funcs = funcs

    @hookimpl(wrapper=True)
    def frameiod_call_handler(
        self, event: WebhookEvent, handler: WebhookHandler
    ) -> Generator[None, Awaitable[Any], Awaitable[Any]]:
        """Wrap the call of one of this App's webhook handlers in its middleware."""
        call = yield
        if id(handler.func) not in self._funcs():
            return call
        return self._run(event, call)

    @hookimpl(wrapper=True)
    def frameiod_call_action(
        self, event: ActionEvent, handler: ActionHandler
    ) -> Generator[None, Awaitable[Any], Awaitable[Any]]:
        """Wrap the call of one of this App's action handlers in its middleware."""
        call = yield
        if id(handler.func) not in self._funcs():
            return call
        return self._run(event, call)

    async def _run(self, event: Any, call: Awaitable[Any]) -> Any:
        async def last(_event: Any) -> Any:
            return await call

        def bind(item: Any, step: Next) -> Next:
            async def run(event: Any) -> Any:
                return await item(event, step)

            return run

        step: Next = last
        for item in reversed(self._middleware):
            step = bind(item, step)
        try:
            return await step(event)
        finally:
            if inspect.iscoroutine(call) and inspect.getcoroutinestate(call) == "CORO_CREATED":
                call.close()  # a middleware never called next: nothing was started
