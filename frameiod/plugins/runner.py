"""Calling what plugins hand over: ``async def`` on the loop, plain functions in a thread.

Handlers, hooks and `App` callbacks may be ``def`` or ``async def``: the host awaits what
is awaitable (`maybe_await`), and a plain handler runs in a daemon thread of its own
(`call_handler`) so it cannot block the event loop, and one that never returns cannot
block the process's exit. Whichever it is, what it raises that is not an ``Exception``
reaches the caller as `HandlerAborted`, never as the daemon's own exit or cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from frameiod.plugins.handlers import HandlerAborted

__all__ = ["call_handler", "maybe_await"]


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if it is awaitable: hooks and callbacks may be ``def`` or ``async def``."""
    return await value if inspect.isawaitable(value) else value


def call_handler(func: Callable[[Any], Any], event: Any) -> Awaitable[Any]:
    """Call a handler: ``async def`` ones on the loop, plain functions in a daemon thread,
    so they cannot block the loop and one that never returns cannot block exit."""
    if inspect.iscoroutinefunction(func):
        return _contained(func(event))
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():  # it may have been cancelled by a timeout meanwhile
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def hand_back(result: Any, error: BaseException | None) -> None:
        # RuntimeError: the loop closed while the handler ran. The daemon stopped and left
        # this call behind; nobody awaits its outcome, and its delivery runs again later.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    def run() -> None:
        try:
            result = func(event)
        except Exception as exc:  # handed to the awaiting task, which decides
            hand_back(None, exc)
        except BaseException as exc:  # a thread has no cancel: whatever this is, it is its own
            hand_back(None, _aborted(exc))
        else:
            hand_back(result, None)

    name = getattr(event, "type", "event")
    # In the caller's context, as an async handler would be: what a wrapper set (a span
    # being the current one) holds in the thread too.
    context = contextvars.copy_context()
    threading.Thread(
        target=context.run, args=(run,), name=f"frameiod-handler-{name}", daemon=True
    ).start()
    return future


async def _contained(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the call was cancelled: a deadline or a stop, which the caller tells apart
        raise _aborted(exc) from exc
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _aborted(exc) from exc


def _aborted(exc: BaseException) -> HandlerAborted:
    return HandlerAborted(f"the handler raised {type(exc).__name__}({exc!s})")
