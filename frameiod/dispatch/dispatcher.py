"""The dispatcher: runs due deliveries from the spool, retries failures, buries the hopeless.

One scheduler loop claims due deliveries (oldest first) while workers are free, and runs
each as its own task, bounded by its handler's timeout: one that raises or hangs never
stops its siblings, and a handler that succeeded is never run again because a sibling
failed. Deadlines are checked by one sweep while calls run, not a timer per call (arming
and cancelling one cost about 3 % of an event's CPU end to end): a call is cut off at most
a tenth of its timeout, and never more than a second, after its deadline.

A failure is retried after an exponential backoff with full jitter; after ``max_attempts``
the delivery is dead (kept for ``frameiod queue replay``).

A handler is called only once its claim is on record (`SpoolBackend.confirm`). While the
spool refuses writes (a full disk, a read-only file, Redis out of memory), the dispatcher
pauses: it claims nothing, keeps the outcomes it could not write, and probes the spool with
a growing interval; once a probe succeeds it writes those outcomes and claims again. So a
fault never turns into the same side effect repeated: each call is one attempt on record.

Plain (non-async) handlers run in a daemon thread (`frameiod.plugins.runner.call_handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from frameiod.events import PayloadError, WebhookEvent, parse_webhook
from frameiod.logs import LastingFault, get_logger
from frameiod.metrics import Metrics
from frameiod.plugins.handlers import Outcome, WebhookHandler
from frameiod.plugins.routing import Routes
from frameiod.plugins.runner import call_handler
from frameiod.ratelimit import TokenBucket
from frameiod.store.base import Claimed, DeliveryId, SpoolBackend, SpoolUnavailable
from frameiod.tasks import TaskSet

__all__ = ["Dispatcher", "Notify", "RetryPolicy"]

log = get_logger("frameiod.dispatch")

# Changes made outside this process (``frameiod queue replay``) are noticed this often.
_POLL_SECONDS = 2.0
# The longest wait between deadline sweeps (shorter when a handler's timeout is short).
_SWEEP_SECONDS = 1.0
# While the spool refuses writes, it is probed after this long, then twice as long each
# time, up to the cap: work resumes soon after a short fault and costs little in a long one.
_PROBE_FIRST_SECONDS = 0.5
_PROBE_MAX_SECONDS = 30.0

Notify = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class _Finished:
    """A call's outcome, as it is to be written to the spool."""

    item: Claimed
    handler: WebhookHandler
    event: WebhookEvent
    outcome: Outcome
    dead: bool
    next_attempt_at: float | None


@dataclass(frozen=True)
class RetryPolicy:
    """``[dispatch]`` settings a handler may override (``timeout=``, ``max_attempts=``)."""

    handler_timeout: float = 30.0
    max_attempts: int = 8
    backoff_initial: float = 5.0
    backoff_max: float = 3600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure: full jitter over an
        exponentially growing cap, so retries of many deliveries spread out."""
        cap = min(self.backoff_max, self.backoff_initial * 2 ** (attempts - 1))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography


def retry_after(error: BaseException | None) -> float | None:
    """Seconds a 429 answer asked to wait (``Retry-After`` or ``retry-after-ms``), or None.

    Reads the frameio SDK's ``TooManyRequestsError`` (an ``ApiError`` with ``status_code``
    and ``headers``) without importing the SDK.
    """
    if getattr(error, "status_code", None) != 429:
        return None
    headers: Any = getattr(error, "headers", None) or {}
    lowered = {str(key).lower(): str(value) for key, value in dict(headers).items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        if "retry-after" in lowered:
            return max(0.0, float(lowered["retry-after"]))
    except ValueError:
        return None  # an HTTP date, which Frame.io does not send: the usual backoff applies
    return None


class Dispatcher:
    """Runs the spool's due deliveries until `stop`."""

    def __init__(
        self,
        spool: SpoolBackend,
        routes: Routes,
        *,
        policy: RetryPolicy | None = None,
        workers: int = 32,
        metrics: Metrics | None = None,
        notify: Notify | None = None,
    ) -> None:
        self._spool = spool
        self._policy = policy or RetryPolicy()
        self._workers = workers
        self._metrics = metrics
        self._notify = notify
        self._handlers = {handler.key: handler for handler in routes.handlers}
        # Calls in progress; a delivery leaves it when its call ends, before its outcome is
        # written, so the worker is free for the next call meanwhile.
        self._running: dict[DeliveryId, tuple[Claimed, asyncio.Task[None]]] = {}
        # Delivery tasks: calls in progress, and outcomes being written after them.
        self._tasks = TaskSet()
        # ``notify`` calls about finished deliveries (observer plugins), beside the tasks.
        self._observers = TaskSet()
        self._busy = dict.fromkeys(self._handlers, 0)
        self._wake = asyncio.Event()
        self._rates: dict[str, TokenBucket] = {}
        self._finished = asyncio.Condition()
        self._watchers = 0  # `wait_for` calls waiting on ``_finished``
        self._stopping = False
        self._scheduling = False
        self._scheduler_stopped = asyncio.Event()
        spool.on_new_work(self._wake.set)
        timeouts = {
            key: h.timeout or self._policy.handler_timeout for key, h in self._handlers.items()
        }
        spool.expect_handlers(timeouts)
        # Deadlines (event-loop time) of calls in progress, and calls the sweep cut off.
        self._deadlines: dict[DeliveryId, float] = {}
        self._expired: set[DeliveryId] = set()
        self._sweep_period = min([_SWEEP_SECONDS, *(t / 10 for t in timeouts.values())])
        self._sweeper: asyncio.TimerHandle | None = None
        self.calls = 0
        # While the spool refuses writes: the pause (its log lines), the outcomes kept until
        # they can be written, and the wait before the next probe.
        self._paused = LastingFault(log, "dispatch paused: the spool refuses writes")
        self._unrecorded: list[_Finished] = []
        self._probe_in = _PROBE_FIRST_SECONDS
        self._resumed_at = float("-inf")
        self._stop_requested = asyncio.Event()

    # --- the scheduler -----------------------------------------------------------

    async def run(self) -> None:
        """Claim and start due deliveries until `stop` is called."""
        self._scheduling = True
        try:
            while not self._stopping:
                # Cleared before claiming: a wake-up that arrives while we claim is kept.
                self._wake.clear()
                if self._paused.active:
                    await self._probe()
                    continue
                free = self._workers - len(self._running)
                claimed: list[Claimed] = []
                try:
                    claimed = await self._claim(free)
                    if self._stopping:  # stop began while we claimed: start nothing more
                        await self._release(claimed)
                        break
                    for item in claimed:
                        self._start(item)
                    if claimed and len(claimed) == free:
                        continue  # maybe more are due; claim again once a worker frees up
                    await self._sleep(free - len(claimed))
                except Exception:
                    # A bug here must not end dispatching quietly while requests still get
                    # their 202: say so loudly, and go on after a pause.
                    log.exception("the dispatch loop failed; it goes on in a second")
                    await asyncio.sleep(1.0)
        finally:
            self._scheduling = False
            self._scheduler_stopped.set()

    async def _claim(self, free: int) -> list[Claimed]:
        claimed: list[Claimed] = []
        try:
            # Handlers of sources with a dispatch rate are claimed per source, at most as
            # many as the source has tokens; excess simply waits in the spool.
            for source, caps in self._groups():
                limit = free - len(claimed)
                bucket = self._rates.get(source) if source else None
                if bucket is not None:
                    limit = min(limit, bucket.available(time.monotonic()))
                if limit <= 0:
                    continue
                got = await self._spool.claim(limit, caps)
                if bucket is not None:
                    bucket.spend(len(got), time.monotonic())
                claimed += got
        except SpoolUnavailable as exc:
            self._pause(exc)
        return claimed

    # --- while the spool refuses writes ------------------------------------------------

    def _pause(self, exc: SpoolUnavailable) -> None:
        """Claim nothing more until a probe of the spool succeeds (logged when it begins,
        then at most once a minute while it lasts)."""
        # A full disk can take a small write now and then (SQLite reuses WAL space a failed
        # write left): a pause soon after a resume is the same fault, and keeps its pace.
        if not self._paused.active and time.monotonic() - self._resumed_at > _PROBE_MAX_SECONDS:
            self._probe_in = _PROBE_FIRST_SECONDS
        self._paused.failed("error", reason=exc.reason, detail=exc.detail)
        if self._metrics is not None:
            self._metrics.dispatch_paused.set(1)

    async def _probe(self) -> None:
        """Wait, then try the spool: on success write the outcomes kept meanwhile and
        resume; on failure wait longer next time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._probe_in):
                await self._stop_requested.wait()
        if self._stopping:
            return
        try:
            await self._spool.check()
            written = await self._write_unrecorded()
        except SpoolUnavailable as exc:
            self._probe_in = min(self._probe_in * 2, _PROBE_MAX_SECONDS)
            self._paused.failed("error", reason=exc.reason, detail=exc.detail)
            return
        self._resumed_at = time.monotonic()
        self._paused.cleared("dispatch resumed", outcomes_written=written)
        if self._metrics is not None:
            self._metrics.dispatch_paused.set(0)

    async def _write_unrecorded(self) -> int:
        """Write the outcomes the spool refused, oldest first; how many were written."""
        written = 0
        while self._unrecorded:
            await self._write(self._unrecorded[0])
            del self._unrecorded[0]
            written += 1
        return written

    async def _release(self, items: list[Claimed]) -> None:
        """Give deliveries back unrun; if the spool cannot take that, a restart (SQLite) or
        the lease running out (Redis) does it."""
        if not items:
            return
        try:
            await self._spool.release(item.delivery_id for item in items)
        except SpoolUnavailable as exc:
            log.error(
                "cannot give back deliveries cut short; they run again later",
                count=len(items),
                reason=exc.reason,
            )

    def set_dispatch_rates(self, rates: Mapping[str, float]) -> None:
        """Handler calls per second allowed for each source's events (0: unlimited)."""
        now = time.monotonic()
        self._rates = {
            source: TokenBucket.full(rate, max(1.0, rate), now)
            for source, rate in rates.items()
            if rate > 0
        }
        self._wake.set()

    def _caps(self) -> dict[str, int]:
        caps = {}
        for key, handler in self._handlers.items():
            room = (handler.concurrency or self._workers) - self._busy[key]
            if room > 0:
                caps[key] = room
        return caps

    def _groups(self) -> list[tuple[str | None, dict[str, int]]]:
        caps = self._caps()
        unrated = {
            k: room for k, room in caps.items() if self._handlers[k].source not in self._rates
        }
        groups: list[tuple[str | None, dict[str, int]]] = [(None, unrated)] if unrated else []
        for source in self._rates:
            rated = {k: room for k, room in caps.items() if self._handlers[k].source == source}
            if rated:
                groups.append((source, rated))
        return groups

    async def _sleep(self, free: int) -> None:
        """Wait for new work, a free worker, the next scheduled retry, or the next token of
        a rate-limited source."""
        timeout = _POLL_SECONDS
        if free > 0:
            now = time.monotonic()
            waiting = {source: bucket.wait(now) for source, bucket in self._rates.items()}
            # A source out of tokens is not "due" until its next token: no busy loop.
            caps = {
                k: room
                for k, room in self._caps().items()
                if waiting.get(self._handlers[k].source, 0.0) == 0.0
            }
            timeout = min([timeout, *(w for w in waiting.values() if w > 0)])
            try:
                due = await self._spool.next_due(caps)
            except SpoolUnavailable:
                due = None
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _start(self, item: Claimed) -> None:
        self._busy[item.handler] += 1
        task = self._tasks.spawn(self._deliver(item), name=f"frameiod-delivery-{item.delivery_id}")
        self._running[item.delivery_id] = (item, task)

    # --- one delivery ------------------------------------------------------------

    def _free_worker(self, item: Claimed) -> None:
        if self._running.pop(item.delivery_id, None) is not None:
            self._busy[item.handler] -= 1
            self._wake.set()

    async def _deliver(self, item: Claimed) -> None:
        handler = self._handlers[item.handler]
        try:
            if not await self._spool.confirm(item):
                return  # replayed or purged between the claim and its mark
            try:
                event = parse_webhook(item.body, item.timestamp, item.event_id)
            except PayloadError as exc:  # stored under other rules, e.g. by an older frameiod
                log.error(
                    "stored event no longer parses", event_id=item.event_id, detail=exc.detail
                )
                await self._spool.finish(
                    item.delivery_id, outcome="error", seconds=0.0, error=exc.detail, dead=True
                )
                return
            outcome, error = await self._call(item.delivery_id, handler, event)
            # Writing the outcome waits its turn in the spool's queue: the next call need not.
            self._free_worker(item)
            await self._record(item, handler, event, outcome, error)
        except SpoolUnavailable as exc:
            # Its claim could not be recorded (so it was not called), or the stored event's
            # burial could not: either way it is still due, and runs once writes succeed.
            self._pause(exc)
        finally:
            self._free_worker(item)
            if self._watchers:  # tests and tooling; a daemon's dispatcher has none
                async with self._finished:
                    self._finished.notify_all()

    async def _call(
        self, delivery_id: DeliveryId, handler: WebhookHandler, event: WebhookEvent
    ) -> tuple[Outcome, BaseException | None]:
        timeout = handler.timeout or self._policy.handler_timeout
        started = time.perf_counter()
        self.calls += 1
        loop = asyncio.get_running_loop()
        self._deadlines[delivery_id] = loop.time() + timeout
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_period, self._sweep)
        try:
            await call_handler(handler.func, event)
        except asyncio.CancelledError:
            if not self._cut_by_deadline(delivery_id):
                raise  # a stop, or the sweep's cancel and a stop's together
            seconds = time.perf_counter() - started
            return Outcome("timeout", seconds, f"no answer within {timeout:g}s"), None
        except Exception as exc:  # a TimeoutError raised by the handler itself included
            seconds = time.perf_counter() - started
            return Outcome("error", seconds, f"{type(exc).__name__}: {exc}"), exc
        finally:
            del self._deadlines[delivery_id]
            # A handler that swallowed the sweep's cancel and returned keeps its outcome.
            self._cut_by_deadline(delivery_id)
        return Outcome("ok", time.perf_counter() - started), None

    def _cut_by_deadline(self, delivery_id: DeliveryId) -> bool:
        """Take back the sweep's cancel of this call, if it made one; True if that was the
        only cancel (as `asyncio.timeout` decides)."""
        if delivery_id not in self._expired:
            return False
        self._expired.discard(delivery_id)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def _sweep(self) -> None:
        """Cancel the calls past their deadline; come back while any call runs."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for delivery_id, deadline in self._deadlines.items():
            running = self._running.get(delivery_id)
            if deadline <= now and running is not None and delivery_id not in self._expired:
                self._expired.add(delivery_id)
                running[1].cancel()
        self._sweeper = (
            loop.call_later(self._sweep_period, self._sweep) if self._deadlines else None
        )

    async def _record(
        self,
        item: Claimed,
        handler: WebhookHandler,
        event: WebhookEvent,
        outcome: Outcome,
        error: BaseException | None,
    ) -> None:
        max_attempts = handler.max_attempts or self._policy.max_attempts
        dead = outcome.status != "ok" and item.attempts >= max_attempts
        retry_in = None
        if outcome.status != "ok" and not dead:
            # A 429 says when to come back; never sooner than that.
            retry_in = max(self._policy.delay(item.attempts), retry_after(error) or 0.0)
        fields = {
            "event_id": item.event_id,
            "event_type": event.type,
            "plugin": handler.plugin,
            "handler": handler.name,
            "attempt": item.attempts,
            "outcome": "dead" if dead else outcome.status,
            "duration_ms": round(outcome.seconds * 1000, 3),
        }
        if outcome.status == "ok":
            log.info("handler finished", **fields)
        elif dead:
            log.error("handler gave up", **fields, error=outcome.error, exc_info=error)
        else:
            log.warning(
                "handler failed",
                **fields,
                error=outcome.error,
                retry_in_s=round(retry_in or 0, 3),
                exc_info=error,
            )
        finished = _Finished(
            item,
            handler,
            event,
            outcome,
            dead,
            time.time() + retry_in if retry_in is not None else None,
        )
        try:
            await self._write(finished)
        except SpoolUnavailable as exc:
            # The call happened; its outcome waits here, never the call again. On record the
            # delivery stays running (its attempt counted), so no claim takes it meanwhile.
            # One line per call in flight when the fault began: nothing new starts after it.
            self._unrecorded.append(finished)
            log.warning(
                "handler outcome kept until the spool takes writes",
                event_id=item.event_id,
                handler=item.handler,
                reason=exc.reason,
            )
            self._pause(exc)

    async def _write(self, finished: _Finished) -> None:
        """Write one outcome to the spool, then count it and tell observers."""
        handler, outcome = finished.handler, finished.outcome
        # Never cancelled (`stop` cancels only calls): the write is not cut off halfway.
        await self._spool.finish(
            finished.item.delivery_id,
            outcome=outcome.status,
            seconds=outcome.seconds,
            error=outcome.error,
            next_attempt_at=finished.next_attempt_at,
            dead=finished.dead,
        )
        if self._metrics is not None:
            self._metrics.handler_finished(
                handler.plugin, handler.name, outcome, dead=finished.dead
            )
        if self._notify is not None:
            final = Outcome("dead", outcome.seconds, outcome.error) if finished.dead else outcome
            # A task of its own: a slow observer holds neither this delivery nor a stop.
            self._observers.spawn(
                self._notify(
                    "frameiod_delivery_finished",
                    event=finished.event,
                    handler=handler,
                    outcome=final,
                )
            )

    # --- waiting and stopping ------------------------------------------------------

    async def wait_for(self, event_id: str, *, settled: bool = False) -> list[Outcome]:
        """Wait until every delivery of ``event_id`` has been attempted at least once and
        none is running (with ``settled``: until each is done or dead); return each one's
        latest outcome. For tests and tooling."""

        def ready(row: dict[str, Any]) -> bool:
            if settled:
                return row["state"] in ("done", "dead")
            return row["attempts"] > 0 and row["state"] != "running"

        async with self._finished:
            self._watchers += 1
            try:
                while True:
                    rows = await self._spool.deliveries_of(event_id)
                    if all(ready(row) for row in rows):
                        return [
                            Outcome(
                                "dead" if r["state"] == "dead" else r["last_outcome"],
                                r["last_seconds"] or 0.0,
                                r["last_error"],
                            )
                            for r in rows
                        ]
                    await self._finished.wait()
            finally:
                self._watchers -= 1

    @property
    def running(self) -> int:
        """Handler calls in progress."""
        return len(self._running)

    async def stop(self, drain_timeout: float) -> int:
        """Claim nothing more; let running calls (and observers) finish for up to
        ``drain_timeout``; cut the rest short and leave their deliveries pending. Outcomes
        already being written are waited for, never cut off. Returns how many calls were cut
        short."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        if self._scheduling:  # a claim in flight must not start calls after this
            await self._scheduler_stopped.wait()
        if self._tasks or self._observers:
            await asyncio.wait(self._tasks | self._observers, timeout=drain_timeout)
        cut = [item for item, task in self._running.values() if not task.done()]
        late = [task for _, task in self._running.values()] + list(self._observers)
        for task in late:
            task.cancel()
        # The rest are writing outcomes, each write bounded by the spool.
        if self._tasks or self._observers:
            await asyncio.gather(*self._tasks, *self._observers, return_exceptions=True)
        await self._release(cut)
        await self._last_try_to_record()
        return len(cut)

    async def _last_try_to_record(self) -> None:
        """At a stop, write the outcomes the spool refused so far, if it takes them now; the
        deliveries of those it still refuses stay running on record and run again at the
        next start (at least once)."""
        if not self._unrecorded:
            return
        try:
            await self._write_unrecorded()
        except SpoolUnavailable as exc:
            log.error(
                "outcomes not recorded at stop; those deliveries run again at the next start",
                count=len(self._unrecorded),
                reason=exc.reason,
            )
