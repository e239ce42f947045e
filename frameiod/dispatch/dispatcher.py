"""The dispatcher: runs due deliveries from the spool, retries failures, buries the hopeless.

One scheduler loop claims due deliveries (oldest first) while workers are free, and runs
each as its own task, bounded by its handler's timeout: one that raises or hangs never
stops its siblings, and a handler that succeeded is never run again because a sibling
failed. Deadlines are checked by one sweep while calls run (`frameiod.dispatch.deadlines`).

A failure is retried after an exponential backoff with full jitter; after ``max_attempts``
the delivery is dead (kept for ``frameiod queue replay``).

A fresh delivery need not wait for a claim: when its handler has a free worker and nothing
older of it may be waiting, the spool (if it can: SQLite) writes it claimed in its accept's
own transaction and hands it over (`reserve`, `take`), so the call starts one commit
sooner. The dispatcher keeps, per handler, whether the spool may hold due work for it
(``_backlog``): set by every notice of new work and every poll, cleared by a claim that
found less than it could take. Only then does the scheduler claim at all.

A handler is called only once its claim is on record (`SpoolBackend.confirm`). While the
spool refuses writes (a full disk, a read-only file, Redis out of memory), the dispatcher
pauses (`frameiod.dispatch.pause`): it claims nothing, keeps the outcomes it could not
write, and probes the spool with a growing interval; once a probe succeeds it writes those
outcomes and claims again. So a
fault never turns into the same side effect repeated: each call is one attempt on record.

Plain (non-async) handlers run in a daemon thread (`frameiod.plugins.runner.call_handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from frameiod.dispatch.deadlines import Deadlines
from frameiod.dispatch.outcomes import Finished, settle
from frameiod.dispatch.pause import WritePause
from frameiod.dispatch.retry import RetryPolicy
from frameiod.events import PayloadError, WebhookEvent, parse_webhook
from frameiod.logs import get_logger
from frameiod.metrics import Metrics
from frameiod.plugins.around import Around
from frameiod.plugins.handlers import HandlerTimeout, Outcome, WebhookHandler
from frameiod.plugins.routing import Routes
from frameiod.plugins.runner import call_handler
from frameiod.ratelimit import TokenBucket
from frameiod.store.base import Claimed, DeliveryId, SpoolBackend, SpoolUnavailable
from frameiod.tasks import TaskSet

__all__ = ["Dispatcher", "Notify"]

log = get_logger("frameiod.dispatch")

# Changes made outside this process (``frameiod queue replay``) are noticed this often.
_POLL_SECONDS = 2.0
# The longest wait between deadline sweeps (shorter when a handler's timeout is short).
_SWEEP_SECONDS = 1.0
# While the spool refuses writes, it is probed after this long, then twice as long each
# time, up to the cap: work resumes soon after a short fault and costs little in a long one.

Notify = Callable[..., Awaitable[None]]


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
        around: Around | None = None,
    ) -> None:
        self._spool = spool
        # Handler calls go through frameiod_call_handler only when a plugin wraps them.
        self._around = around if around and around.wrapped["frameiod_call_handler"] else None
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
        # Workers held for fresh deliveries while their accept is written (`reserve`).
        self._reserved = dict.fromkeys(self._handlers, 0)
        self._reserving = 0
        # What the claim in flight may return (`_claim`): workers, and room per handler.
        self._claiming: tuple[int, dict[str, int]] = (0, {})
        # Handlers that may have due deliveries in the spool: only for these is a claim
        # worth a trip to it, and only for the others may a fresh delivery start at once
        # (it would jump the queue otherwise).
        self._backlog = set(self._handlers)
        self._wake = asyncio.Event()
        self._rates: dict[str, TokenBucket] = {}
        self._finished = asyncio.Condition()
        self._watchers = 0  # `wait_for` calls waiting on ``_finished``
        self._stopping = False
        self._scheduling = False
        self._scheduler_stopped = asyncio.Event()
        # Calls start in the scheduler's context, never in that of the request whose
        # accept handed them over (`take`): its log fields and spans are not theirs.
        self._context = contextvars.copy_context()
        spool.on_new_work(self._new_work)
        spool.hand_fresh_to(self)
        timeouts = {
            key: h.timeout or self._policy.handler_timeout for key, h in self._handlers.items()
        }
        spool.expect_handlers(timeouts)
        self._deadlines = Deadlines(min([_SWEEP_SECONDS, *(t / 10 for t in timeouts.values())]))
        self.calls = 0
        # While the spool refuses writes: the pause, and the outcomes kept until they can
        # be written.
        self._paused = WritePause(metrics)
        self._unrecorded: list[Finished] = []
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
                free = self._workers - len(self._running) - self._reserving
                claimed: list[Claimed] = []
                try:
                    if self._backlog:
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
        # Spoken for until the claim's deliveries start: a fresh delivery accepted while it
        # is in flight must not take the same worker, or the same place under a handler's
        # concurrency (`reserve`).
        room = self._caps()
        self._claiming = (free, room)
        try:
            # Handlers of sources with a dispatch rate are claimed per source, at most as
            # many as the source has tokens; excess simply waits in the spool.
            for source, caps in self._groups(room):
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
                self._drained(got, caps, limit)
        except SpoolUnavailable as exc:
            self._paused.begin(exc)
        finally:
            self._claiming = (0, {})
        return claimed

    def _drained(self, got: list[Claimed], caps: dict[str, int], limit: int) -> None:
        """Forget the backlog of each handler that got fewer than it could take: it had no
        more due. (Work committed after this claim says so through `_new_work`.) A claim
        cut at its limit says nothing of that: the handlers left out may have more."""
        if len(got) >= limit:
            return
        taken = dict.fromkeys(caps, 0)
        for item in got:
            taken[item.handler] += 1
        for key, room in caps.items():
            if taken[key] < min(room, limit):
                self._backlog.discard(key)

    def _new_work(self) -> None:
        """The spool has new due work (of any handler, as far as we know): claim it."""
        self._backlog.update(self._handlers)
        self._wake.set()

    # --- fresh deliveries, started as they are accepted --------------------------------

    def reserve(self, handlers: Sequence[str]) -> list[str]:
        """The ``handlers`` of an event being accepted that start at once: those with no
        backlog and a free worker (and room under their concurrency and their source's
        dispatch rate); each is held until `take`."""
        if not self._scheduling or self._stopping or self._paused.active:
            return []
        taken: list[str] = []
        claiming, claiming_for = self._claiming
        for key in handlers:
            handler = self._handlers.get(key)
            if handler is None or key in self._backlog:
                continue
            if len(self._running) + self._reserving + claiming >= self._workers:
                break
            held = self._busy[key] + self._reserved[key] + claiming_for.get(key, 0)
            if held >= (handler.concurrency or self._workers):
                continue
            bucket = self._rates.get(handler.source)
            if bucket is not None:
                now = time.monotonic()
                if bucket.available(now) < 1:
                    continue
                bucket.spend(1, now)
            self._reserved[key] += 1
            self._reserving += 1
            taken.append(key)
        return taken

    def take(self, reserved: Sequence[str], started: Sequence[Claimed]) -> None:
        """Let the workers held for ``reserved`` go, and start ``started``: claimed in their
        accept's own write, now on record."""
        for key in reserved:
            self._reserved[key] -= 1
        self._reserving -= len(reserved)
        if self._stopping:
            # Too late to run them: given back like any call a stop cuts short (a delivery
            # task: a stop waits for it, and never cancels it).
            if started:
                self._tasks.spawn(self._release(list(started)))
            return
        for item in started:
            self._start(item)
        if len(started) < len(reserved) and self._backlog:
            self._wake.set()  # a held worker went unused, and work may be waiting for it

    # --- while the spool refuses writes ------------------------------------------------

    async def _probe(self) -> None:
        """Wait, then try the spool: on success write the outcomes kept meanwhile and
        resume; on failure wait longer next time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._paused.wait(keeping=bool(self._unrecorded))):
                await self._stop_requested.wait()
        if self._stopping:
            return
        try:
            await self._spool.check()
            written = await self._write_unrecorded()
        except SpoolUnavailable as exc:
            self._paused.probe_failed(exc)
            return
        self._paused.resumed(written)
        self._new_work()  # what was accepted meanwhile waits in the spool
        await self._tell_watchers()

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
            room = (handler.concurrency or self._workers) - self._busy[key] - self._reserved[key]
            if room > 0:
                caps[key] = room
        return caps

    def _groups(self, caps: dict[str, int]) -> list[tuple[str | None, dict[str, int]]]:
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
            # A retry's time has come, or another process (``frameiod queue replay``) may
            # have made work due: look for it.
            self._backlog.update(self._handlers)

    def _start(self, item: Claimed) -> None:
        self._busy[item.handler] += 1
        task = self._tasks.spawn(
            self._deliver(item),
            name=f"frameiod-delivery-{item.delivery_id}",
            context=self._context,
        )
        self._running[item.delivery_id] = (item, task)

    # --- one delivery ------------------------------------------------------------

    def _free_worker(self, item: Claimed) -> None:
        if self._running.pop(item.delivery_id, None) is not None:
            self._busy[item.handler] -= 1
            if self._backlog:  # else there is nothing to claim for it
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
                burial = Outcome("error", 0.0, exc.detail)
                await self._keep_unless_written(Finished(item, handler, None, burial, True, None))
                return
            outcome, error = await self._call(item, handler, event)
            # Writing the outcome waits its turn in the spool's queue: the next call need not.
            self._free_worker(item)
            finished = settle(
                self._policy, item, handler=handler, event=event, outcome=outcome, error=error
            )
            await self._keep_unless_written(finished)
        except SpoolUnavailable as exc:
            # Its claim could not be recorded, so it was not called: it is still due, and
            # runs once writes succeed.
            self._paused.begin(exc)
        finally:
            self._free_worker(item)
            await self._tell_watchers()

    async def _tell_watchers(self) -> None:
        """Wake `wait_for`: a delivery ended, or outcomes kept were written."""
        if self._watchers:  # tests and tooling; a daemon's dispatcher has none
            async with self._finished:
                self._finished.notify_all()

    async def _call(
        self, item: Claimed, handler: WebhookHandler, event: WebhookEvent
    ) -> tuple[Outcome, BaseException | None]:
        delivery_id = item.delivery_id
        timeout = handler.timeout or self._policy.handler_timeout
        started = time.perf_counter()
        self.calls += 1
        self._deadlines.arm(delivery_id, timeout)
        try:
            if self._around is None:
                await call_handler(handler.func, event)
            else:
                await self._around.call_handler(
                    event,
                    handler,
                    item.attempts,
                    item.trace_context,
                    cut=functools.partial(self._deadlines.cut, delivery_id),
                    limit=timeout,
                )
        except asyncio.CancelledError:
            if not self._deadlines.cut(delivery_id):
                raise  # a stop, or the sweep's cancel and a stop's together
            seconds = time.perf_counter() - started
            return Outcome("timeout", seconds, f"no answer within {timeout:g}s"), None
        except HandlerTimeout:  # the deadline, as wrappers saw it
            seconds = time.perf_counter() - started
            return Outcome("timeout", seconds, f"no answer within {timeout:g}s"), None
        except Exception as exc:  # a TimeoutError raised by the handler itself included
            seconds = time.perf_counter() - started
            return Outcome("error", seconds, f"{type(exc).__name__}: {exc}"), exc
        finally:
            self._deadlines.disarm(delivery_id)
        return Outcome("ok", time.perf_counter() - started), None

    async def _keep_unless_written(self, finished: Finished) -> None:
        try:
            await self._write(finished)
        except SpoolUnavailable as exc:
            # The call happened (or the event was found unparseable); its outcome waits
            # here, never the call again. On record the delivery stays running (its attempt
            # counted), so no claim takes it meanwhile. One line per call in flight when
            # the fault began: nothing new starts after it.
            self._unrecorded.append(finished)
            log.warning(
                "handler outcome kept until the spool takes writes",
                event_id=finished.item.event_id,
                handler=finished.item.handler,
                reason=exc.reason,
            )
            self._paused.begin(exc)

    async def _write(self, finished: Finished) -> None:
        """Write one outcome to the spool, then count it and tell observers (a burial
        without a call: neither)."""
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
        if finished.event is None:
            return
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
