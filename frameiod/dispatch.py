"""The dispatcher: takes accepted events from the spool and calls their handlers.

Each handler is called on its own, bounded by its timeout, so one that raises or hangs
never stops its siblings. Plain (non-async) handlers run in a daemon thread: they cannot
block the event loop, and one that never returns cannot keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from frameiod.events import WebhookEvent
from frameiod.handlers import Outcome, Routes, WebhookHandler
from frameiod.metrics import Metrics
from frameiod.spool import Envelope, Spool

__all__ = ["DEFAULT_HANDLER_TIMEOUT", "DEFAULT_WORKERS", "Dispatcher", "Notify"]

log = structlog.get_logger("frameiod.dispatch")

DEFAULT_WORKERS = 8
DEFAULT_HANDLER_TIMEOUT = 30.0
# How many finished events `wait_for` remembers, so a waiter that comes late still returns.
_REMEMBERED = 10_000

Notify = Callable[..., Awaitable[None]]


async def _no_observers(hook: str, **kwargs: Any) -> None:
    return None


def _in_daemon_thread(func: Callable[[WebhookEvent], Any], event: WebhookEvent) -> Awaitable[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():  # it may have been cancelled by the timeout meanwhile
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def run() -> None:
        try:
            result = func(event)
        except BaseException as exc:  # handed to the awaiting task, which decides
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"frameiod-handler-{event.type}", daemon=True).start()
    return future


class Dispatcher:
    """Workers that consume ``spool`` until it is closed and drained."""

    def __init__(
        self,
        spool: Spool,
        routes: Routes | None = None,
        *,
        metrics: Metrics | None = None,
        notify: Notify = _no_observers,
        workers: int = DEFAULT_WORKERS,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    ) -> None:
        self._spool = spool
        self._routes = routes or Routes(())
        self._metrics = metrics
        self._notify = notify
        self._workers = workers
        self._handler_timeout = handler_timeout
        self._limits = {
            handler: asyncio.Semaphore(handler.concurrency)
            for handler in self._routes.handlers
            if handler.concurrency
        }
        self._finished: OrderedDict[str, asyncio.Future[list[Outcome]]] = OrderedDict()
        self.dispatched = 0

    async def run(self) -> None:
        """Run the workers; returns once the spool is closed and every event is handled."""
        async with asyncio.TaskGroup() as group:
            for number in range(self._workers):
                group.create_task(self._work(), name=f"frameiod-worker-{number}")

    async def _work(self) -> None:
        while (envelope := await self._spool.get()) is not None:
            await self.dispatch(envelope)

    async def dispatch(self, envelope: Envelope) -> list[Outcome]:
        """Call every handler that wants ``envelope``'s event; return their outcomes."""
        event = envelope.event
        handlers = self._routes.for_delivery(envelope.source, event.type, envelope.secret_id)
        self.dispatched += 1
        log.info(
            "event dispatched",
            event_id=envelope.id,
            source=envelope.source,
            event_type=event.type,
            resource_id=event.resource_id,
            handlers=[f"{h.plugin}:{h.name}" for h in handlers],
            queued_ms=round((time.time() - envelope.received_at) * 1000, 3),
        )
        await self._notify("frameiod_event_accepted", event=event, source=envelope.source)
        outcomes = list(
            await asyncio.gather(*(self._call(handler, envelope) for handler in handlers))
        )
        finished = self._finish(envelope.id)
        if not finished.done():
            finished.set_result(outcomes)
        return outcomes

    async def _call(self, handler: WebhookHandler, envelope: Envelope) -> Outcome:
        limit = self._limits.get(handler)
        if limit is not None:
            async with limit:
                outcome, error = await self._timed(handler, envelope.event)
        else:
            outcome, error = await self._timed(handler, envelope.event)
        labels = {"plugin": handler.plugin, "handler": handler.name}
        fields = {
            "event_id": envelope.id,
            "event_type": envelope.event.type,
            **labels,
            "outcome": outcome.status,
            "duration_ms": round(outcome.seconds * 1000, 3),
        }
        if outcome.status == "ok":
            log.info("handler finished", **fields)
        else:
            log.warning("handler failed", **fields, error=outcome.error, exc_info=error)
        if self._metrics is not None:
            self._metrics.handler_finished(handler.plugin, handler.name, outcome)
        await self._notify(
            "frameiod_delivery_finished", event=envelope.event, handler=handler, outcome=outcome
        )
        return outcome

    async def _timed(
        self, handler: WebhookHandler, event: WebhookEvent
    ) -> tuple[Outcome, BaseException | None]:
        timeout = handler.timeout or self._handler_timeout
        started = time.perf_counter()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if handler.is_async:
                    await handler.func(event)
                else:
                    await _in_daemon_thread(handler.func, event)
        except Exception as exc:
            seconds = time.perf_counter() - started
            # A TimeoutError the handler raised itself is its error, not our deadline.
            if isinstance(exc, TimeoutError) and deadline.expired():
                return Outcome("timeout", seconds, f"no answer within {timeout:g}s"), None
            return Outcome("error", seconds, f"{type(exc).__name__}: {exc}"), exc
        return Outcome("ok", time.perf_counter() - started), None

    def _finish(self, event_id: str) -> asyncio.Future[list[Outcome]]:
        future = self._finished.get(event_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._finished[event_id] = future
            while len(self._finished) > _REMEMBERED:
                self._finished.popitem(last=False)
        return future

    async def wait_for(self, event_id: str) -> list[Outcome]:
        """Wait until every handler of event ``event_id`` has finished; return the outcomes."""
        return await asyncio.shield(self._finish(event_id))
