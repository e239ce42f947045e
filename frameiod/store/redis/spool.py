"""`RedisSpool`: the Redis store's `frameiod.store.base.SpoolBackend`, each operation one Lua
script (`frameiod.store.redis.scripts`) or a few commands."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from frameiod.store.base import (
    STATES,
    Accepted,
    Claimed,
    DeliveryFilter,
    DeliveryId,
    DeliveryPage,
    EventDelivery,
    EventDetail,
    HandOver,
    Incoming,
    ItemResult,
    ListedDelivery,
    Listeners,
    QueueError,
    QueueStats,
    RateLimited,
    Role,
    Taker,
    working_handover,
)
from frameiod.store.redis import actions, connection, scripts
from frameiod.store.redis.batches import Batches
from frameiod.store.redis.connection import text
from frameiod.store.redis.streams import Intake
from frameiod.store.redis_keys import GROUP, closed_error, redis_errors, safe_url

__all__ = ["DEFAULT_COALESCE_SECONDS", "DEFAULT_HANDLER_TIMEOUT", "LEASE_GRACE", "RedisSpool"]

T = TypeVar("T")

LEASE_GRACE = 5.0
"""Seconds a claimed delivery may outlive its handler's timeout before others take it."""
DEFAULT_HANDLER_TIMEOUT = 30.0
"""The lease of a handler `RedisSpool.expect_handlers` did not name, unless told otherwise."""
DEFAULT_COALESCE_SECONDS = 660.0
"""How long an identical body may join a pending twin, unless told otherwise."""

_ERROR_LIMIT = 2000
_PURGE_BATCH = 500
# Unread stream entries `next_due` looks at per source: what one take-in reads, so more
# than a claim leaves behind when receivers keep up.
_UNREAD_SCAN = 256


def _parts(delivery_id: DeliveryId) -> list[str]:
    """Event id, handler and attempt of a claimed delivery's id."""
    event_id, rest = str(delivery_id).split(" ", 1)
    handler, attempt = rest.rsplit(" ", 1)
    return [event_id, handler, attempt]


class RedisSpool:
    """`frameiod.store.base.SpoolBackend` on Redis Streams, shared by every receiver."""

    recovered = 0  # nothing to recover at start: leases and XAUTOCLAIM take over any time

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        prefix: str,
        *,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        coalesce_seconds: float = DEFAULT_COALESCE_SECONDS,
        handover: HandOver | None = None,
    ) -> None:
        self._client = client
        self._url = url
        self._prefix = prefix
        self._default_timeout = handler_timeout
        self._body_ttl = int(coalesce_seconds)
        self.node = connection.node_name()
        self._listeners = Listeners()
        self._closed = False
        self._timeouts: dict[str, float] = {}
        self.forget_consumers_after = 3600.0
        """Seconds a consumer with nothing pending may be idle before it is dropped."""
        self._intake = Intake(client, prefix, self.node, client.register_script(scripts.SCHEDULE))
        accept, finish = (
            client.register_script(scripts.ACCEPT),
            client.register_script(scripts.FINISH),
        )
        self.handover = "loop idle" if handover is not None else "immediate"
        """How accepts and outcomes reach Redis, for the start-up log (see `Backend`)."""
        self._accepts = Batches(accept, url, [prefix, GROUP, self._body_ttl], 2, handover)
        self._outcomes = Batches(finish, url, [prefix], 1, handover)
        self._claim = client.register_script(scripts.CLAIM)
        self._release = client.register_script(scripts.RELEASE)
        self._next_due = client.register_script(scripts.NEXT_DUE)
        self._purge_done = client.register_script(scripts.PURGE_DONE)
        self._purge_seen = client.register_script(scripts.PURGE_SEEN)

    @classmethod
    async def open(
        cls,
        url: str,
        prefix: str,
        *,
        role: Role = "daemon",
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        coalesce_seconds: float = DEFAULT_COALESCE_SECONDS,
        handover: HandOver | None = None,
    ) -> RedisSpool:
        """Connect to the Redis at ``url`` and use its keys under ``prefix``; raise
        `SpoolError` if Redis cannot be used.

        ``handler_timeout`` is the lease of a handler `expect_handlers` did not name;
        ``coalesce_seconds`` how long an identical body may still join a pending twin;
        ``handover`` when to send a batch of accepts (see `frameiod.store.base.HandOver`).
        Warns when Redis's persistence settings could lose an acknowledged event. With
        ``role="operator"``, for the operator's actions: no warnings, a longer wait for
        Redis's answers, and `QueueError` if it cannot be reached.
        """
        if role == "operator":
            return cls(await connection.open_for_operator(url), url, prefix)
        return cls(
            await connection.open_for_daemon(url),
            url,
            prefix,
            handler_timeout=handler_timeout,
            coalesce_seconds=coalesce_seconds,
            handover=working_handover(handover),
        )

    async def _operate(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run one of the operator's actions; every Redis failure a `QueueError`."""
        if self._closed:
            raise QueueError(f"cannot use Redis at {safe_url(self._url)}: the spool is closed")
        try:
            return await action()
        except (RedisError, OSError) as exc:
            raise connection.operator_error(self._url, exc) from None

    def describe(self) -> str:
        """The Redis URL (without password) and the key prefix."""
        return f"{safe_url(self._url)} ({self._prefix}:*)"

    @property
    def client(self) -> aioredis.Redis:
        """The connection, for what else the daemon keeps in this Redis (the per-source rate
        limits every receiver shares)."""
        return self._client

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever this receiver accepted or rescheduled work."""
        self._listeners.add(listener)

    async def check(self) -> None:
        """Raise `SpoolUnavailable` if Redis refuses a small write, or does not answer."""
        # A write, not a PING: a read-only replica (after a failover) and a full Redis
        # under noeviction both answer PING, and refuse every delivery.
        if self._closed:
            raise closed_error()
        with redis_errors(self._url):
            await self._client.set(f"{self._prefix}:ready:{self.node}", 1, px=10_000)

    def expect_handlers(self, timeouts: dict[str, float]) -> None:
        """The handlers this receiver runs and their timeouts (the leases of its claims)."""
        self._timeouts = dict(timeouts)

    def hand_fresh_to(self, taker: Taker) -> None:
        """Nothing to do: every delivery is claimed through its lease, so that any receiver
        may run it."""

    def _lease(self, handler: str) -> float:
        return self._timeouts.get(handler, self._default_timeout) + LEASE_GRACE

    def _longest_lease(self) -> float:
        """How long an entry must sit unmoved before another receiver takes it over."""
        return max(self._timeouts.values(), default=self._default_timeout) + LEASE_GRACE

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """``XADD`` the event with one pending delivery per handler, unless a duplicate; in
        a batch with the other requests of this loop turn (`frameiod.store.redis.batches`).
        With ``incoming.limit``, the source's token is taken in the same script."""
        if self._closed:
            raise closed_error()
        rate, burst = incoming.limit if incoming.limit is not None else (None, "")
        fields = [
            incoming.id,
            incoming.source,
            incoming.type,
            str(incoming.timestamp),
            incoming.signature,
            incoming.secret_id,
            repr(incoming.received_at),
            hashlib.sha256(incoming.body).hexdigest(),
            "" if rate is None else repr(rate),
            str(burst),
            incoming.trace_context or "",
            list(handlers),
        ]
        reply = await self._accepts.submit(fields, incoming.body)
        event_id, answer = text(reply[0]) or "", text(reply[1])
        if not event_id:
            raise RateLimited(float(answer or 0))
        # Our own id back means the first try did land and a retry of the script after a
        # dropped connection saw it: that is this request's event, not a duplicate.
        if answer == "duplicate" and event_id != incoming.id:
            return Accepted(event_id, duplicate=True, deliveries=0)
        self._intake.sources.add(incoming.source)
        if handlers:
            self._listeners.notify()
        return Accepted(incoming.id, duplicate=False, deliveries=len(handlers))

    async def claim(
        self, limit: int, caps: dict[str, int], now: float | None = None
    ) -> list[Claimed]:
        """Take in new stream entries (and those of dead receivers), then claim up to
        ``limit`` due deliveries, oldest first, under a lease.

        Due times and leases are compared with Redis's clock unless ``now`` is given.
        """
        if self._closed:
            raise closed_error()
        if limit <= 0 or not caps:
            return []
        moment = time.time() if now is None else now
        with redis_errors(self._url):
            await self._intake.take_in(moment, self._longest_lease())
            args: list[Any] = [self._prefix, "" if now is None else repr(now), limit]
            for handler, room in caps.items():
                if room > 0:
                    args += [handler, room, repr(self._lease(handler))]
            reply = await self._claim(args=args)
        if not reply:
            return []
        claimed = []
        fields, bodies = json.loads(reply[0]), reply[1:]
        for (event_id, handler, attempts, source, timestamp, received_at, trace), body in zip(
            fields, bodies, strict=True
        ):
            item = Claimed(
                # The attempt too: a delivery whose lease ran out may be claimed again, by
                # this receiver as well, while the first call is still finishing.
                delivery_id=f"{event_id} {handler} {attempts}",
                event_id=event_id,
                handler=handler,
                attempts=attempts,
                source=source,
                body=body,
                timestamp=int(timestamp),
                received_at=float(received_at),
                trace_context=trace or None,
            )
            claimed.append(item)
        return claimed

    async def confirm(self, item: Claimed) -> bool:
        """True: the claim script counted the attempt and set the lease before it returned."""
        if self._closed:
            raise closed_error()
        return True

    async def finish(
        self,
        delivery_id: DeliveryId,
        *,
        outcome: str,
        seconds: float,
        error: str | None,
        next_attempt_at: float | None = None,
        dead: bool = False,
    ) -> None:
        """Record how a call ended (ignored if a newer attempt already owns the delivery)."""
        if self._closed:
            raise closed_error()
        event_id, handler, attempt = _parts(delivery_id)
        now = repr(time.time())
        await self._outcomes.submit(
            [
                event_id,
                handler,
                attempt,
                outcome,
                (error or "")[:_ERROR_LIMIT],
                repr(seconds),
                repr(next_attempt_at) if next_attempt_at is not None else now,
                "1" if dead else "0",
                now,
            ]
        )
        if outcome != "ok" and not dead:
            self._listeners.notify()

    async def release(self, delivery_ids: Iterable[DeliveryId]) -> None:
        """Make deliveries cut short by a stop due now, for any receiver."""
        if self._closed:
            raise closed_error()
        args: list[Any] = [self._prefix, repr(time.time())]
        for delivery_id in delivery_ids:
            args += _parts(delivery_id)
        if len(args) > 2:
            with redis_errors(self._url):
                await self._release(args=args)

    async def next_due(self, handlers: Iterable[str]) -> float | None:
        """The earliest due time of the handlers' deliveries: the first score in their due
        sets (a retry, or a lease running out), or of one accepted but not yet taken in."""
        names = list(handlers)
        if not names:
            return None
        return await self._earliest(names, unread_of_any=False)

    async def _earliest(self, handlers: list[str], *, unread_of_any: bool) -> float | None:
        """When the first delivery of ``handlers`` is due; with ``unread_of_any``, also of
        any handler's in stream entries no receiver has read yet."""
        if self._closed:
            raise closed_error()
        args = [self._prefix, GROUP, _UNREAD_SCAN, int(unread_of_any), *handlers]
        with redis_errors(self._url):
            due = await self._next_due(args=args)
        return float(due) if due is not None else None

    async def deliveries_of(self, event_id: str) -> list[EventDelivery]:
        """Every delivery of one event, in the order they were accepted."""
        if self._closed:
            raise closed_error()
        with redis_errors(self._url):
            raw = await self._client.hgetall(f"{self._prefix}:event:{event_id}")
        return actions.delivery_rows(event_id, raw)

    async def gauges(self, now: float | None = None) -> tuple[dict[str, int], float]:
        """Deliveries per state (kept by the scripts), and the age of the oldest due one: of
        the handlers this receiver runs, or of any in entries no receiver has read yet (all
        workers busy, or every receiver stuck)."""
        moment = time.time() if now is None else now
        if self._closed:
            raise closed_error()
        with redis_errors(self._url):
            counts = await self._client.hgetall(f"{self._prefix}:counts")
        due = await self._earliest(list(self._timeouts), unread_of_any=True)
        states = dict.fromkeys(STATES, 0)
        for state, value in counts.items():
            if (name := str(text(state))) in states:
                states[name] = max(0, int(value))
        age = moment - due if due is not None and due <= moment else 0.0
        return states, age

    async def purge_done(self, older_than: float, replay_window: float = 0.0) -> int:
        """Delete events (and their stream entries) all of whose deliveries are done,
        received more than ``older_than`` seconds ago, and forget requests signed more than
        ``replay_window`` seconds ago."""
        if self._closed:
            raise closed_error()
        now = time.time()
        with redis_errors(self._url):
            purged = await self._in_batches(self._purge_done, now - older_than)
            await self._in_batches(self._purge_seen, now - replay_window)
            await self._intake.forget_gone_consumers(self.forget_consumers_after)
        return purged

    async def _in_batches(self, script: AsyncScript, cutoff: float) -> int:
        """Run a purge script until it has nothing left before ``cutoff``; how many it did."""
        done = 0
        while batch := int(await script(args=[self._prefix, repr(cutoff), _PURGE_BATCH])):
            done += batch
            if batch < _PURGE_BATCH:
                break
        return done

    async def stats(self, now: float | None = None) -> QueueStats:
        """Deliveries per state (``P:counts``) and per handler, and the age of the oldest
        due pending one."""
        moment = time.time() if now is None else now
        return await self._operate(lambda: actions.stats(self._client, self._prefix, moment))

    async def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[ListedDelivery]:
        """Deliveries, newest event first; their ids are ``"<event id> <handler>"``."""
        return await self._operate(
            lambda: actions.list_deliveries(self._client, self._prefix, state, handler, limit)
        )

    async def show(self, event_id: str) -> EventDetail | None:
        """One event, its payload (from its stream entry) and its deliveries."""
        return await self._operate(lambda: actions.show(self._client, self._prefix, event_id))

    async def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """Make dead deliveries (of event ids, or ``"<event id> <handler>"``) pending again."""
        return await self._operate(
            lambda: actions.replay(self._client, self._prefix, ids, all_dead)
        )

    async def purge_dead(self, older_than: float) -> int:
        """Purge dead letters that died more than ``older_than`` seconds ago."""
        return await self._operate(
            lambda: actions.purge_dead(self._client, self._prefix, older_than)
        )

    async def list_page(
        self, wanted: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage:
        """Deliveries ``wanted``, newest event first, a page from ``cursor`` on."""
        c, p = self._client, self._prefix
        return await self._operate(lambda: actions.list_page(c, p, wanted, limit, cursor))

    async def event_of(self, delivery_id: str) -> str | None:
        """The event id of delivery ``"<event id> <handler>"``, None if none."""
        c, p = self._client, self._prefix
        return await self._operate(lambda: actions.event_of(c, p, delivery_id))

    async def replay_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """`replay` each of ``ids`` on its own: what each replayed, or why not."""
        return await self._operate(lambda: actions.replay_items(self._client, self._prefix, ids))

    async def purge_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """Purge the dead deliveries of each of ``ids``: what each purged, or why not."""
        return await self._operate(lambda: actions.purge_items(self._client, self._prefix, ids))

    async def replay_matching(self, wanted: DeliveryFilter) -> int:
        """Make every dead delivery ``wanted`` matches pending again."""
        c, p = self._client, self._prefix
        return await self._operate(lambda: actions.replay_matching(c, p, wanted))

    async def purge_matching(self, wanted: DeliveryFilter, older_than: float) -> int:
        """Purge the dead deliveries ``wanted`` matches, dead longer than ``older_than``."""
        c, p = self._client, self._prefix
        return await self._operate(lambda: actions.purge_matching(c, p, wanted, older_than))

    async def close(self) -> None:
        """Close the connections (everything is already in Redis); every call after this is
        refused. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self._accepts.drain()
        await self._outcomes.drain()
        await self._client.aclose()
