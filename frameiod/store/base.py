"""The seam between frameiod and its durable store: what the server, the dispatcher and the
operator's commands use, the rows they get back, the errors they branch on, and replay
protection's window.

`frameiod.store.sqlite.Spool` and `frameiod.store.redis.RedisSpool` implement it;
`frameiod.store.open` opens the configured one, for the daemon or for the operator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

__all__ = [
    "HOLD_AT_MOST",
    "REPLAY_MARGIN",
    "STATES",
    "Accepted",
    "BadCursor",
    "Claimed",
    "Delivery",
    "DeliveryFilter",
    "DeliveryId",
    "DeliveryPage",
    "EventDelivery",
    "EventDetail",
    "HandOver",
    "Incoming",
    "ItemResult",
    "ListedDelivery",
    "Listeners",
    "QueueError",
    "QueueStats",
    "RateLimited",
    "Role",
    "SpoolBackend",
    "SpoolError",
    "SpoolUnavailable",
    "Taker",
    "decode_cursor",
    "encode_cursor",
    "replay_window",
    "working_handover",
]

STATES = ("pending", "running", "done", "dead")
"""A delivery's states: ``pending`` (due at its next attempt), ``running`` (claimed by a
worker), ``done`` (its handler succeeded), ``dead`` (out of attempts: a dead letter)."""

Role = Literal["daemon", "operator"]
"""Who opens a store: the daemon (start-up work: recovering what a crash left running, its
threads and connections), or an operator's command beside a running daemon (none of that)."""

HandOver = Callable[[asyncio.AbstractEventLoop, Callable[[], None], float], bool]
"""How a store asks an event loop to call back when it runs out of work, or after at most
the given seconds; False if that loop cannot (`frameiod.idle.call_when_idle` is one)."""

HOLD_AT_MOST = 0.0015
"""Seconds a write may wait for a busy loop to run out of work before it is handed over:
under a load that keeps the loop busy, about how often a batch (and its fsync, on the core
the event loop needs) begins."""


def working_handover(handover: HandOver | None) -> HandOver | None:
    """``handover`` if the running event loop can call back through it (asked once, with
    nothing to run), else None: the store then sends each write as it comes."""
    if handover is not None and handover(asyncio.get_running_loop(), _nothing, HOLD_AT_MOST):
        return handover
    return None


def _nothing() -> None:
    """A hand-over's callback with nothing to hand over."""


REPLAY_MARGIN = 60.0
"""Seconds a seen request is remembered beyond the largest tolerance (clock skew)."""


class SpoolError(Exception):
    """The spool cannot be used at all (unreadable, corrupt, wrong settings): stop start-up."""


class QueueError(Exception):
    """An operator's action on the store failed; the message is what the user reads."""


class BadCursor(QueueError):
    """A page cursor the store did not make (or from another store)."""


class SpoolUnavailable(Exception):
    """The spool cannot take writes right now (disk full, read-only); ``reason`` says which.

    Callers answer 503 with Retry-After: nothing was committed, and the sender retries.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RateLimited(Exception):
    """The source is over its rate: nothing was committed; ``wait`` is the seconds until it
    may send again (the answer is 429 with Retry-After)."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"over its rate for {wait:.3f} s")
        self.wait = wait


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified, validated delivery, as the server hands it to the spool."""

    id: str
    source: str
    type: str
    body: bytes
    timestamp: int
    signature: str
    secret_id: str
    received_at: float
    limit: tuple[float, int] | None = None
    """The source's rate limit (per second, burst) when the store takes the request's
    token in the accept itself, in the same write (`frameiod.ratelimit.SourceLimits`
    says when); then `SpoolBackend.accept` may raise `RateLimited`. None: it was taken."""
    trace_context: str | None = None
    """The W3C ``traceparent`` of the span that received it, when a tracing plugin made
    one: stored with the event so its handler calls join that trace."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The spool's answer to an incoming delivery."""

    id: str
    """The event id to give the sender: the new one, or the original's for a duplicate."""
    duplicate: bool
    deliveries: int
    started: tuple[Claimed, ...] = ()
    """The deliveries written as already claimed, for the `Taker` that reserved them."""


DeliveryId = int | str
"""Opaque to the dispatcher: a row id in SQLite, ``"<event id> <handler>"`` in Redis."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """One delivery handed to a worker: run ``handler`` for this event."""

    delivery_id: DeliveryId
    event_id: str
    handler: str
    attempts: int
    source: str
    body: bytes
    timestamp: int
    received_at: float
    trace_context: str | None = None
    """`Incoming.trace_context` as stored with the event (None for an event without)."""


class Delivery(TypedDict):
    """One delivery of an event, as `SpoolBackend.show` lists them."""

    id: DeliveryId
    """What `SpoolBackend.replay` takes: a number in SQLite, ``"<event id> <handler>"`` in
    Redis."""
    handler: str
    state: str
    """One of `STATES`."""
    attempts: int
    next_attempt_at: float | None
    last_outcome: str | None
    last_error: str | None
    last_seconds: float | None
    updated_at: float | None


class EventDelivery(Delivery):
    """One delivery with its event's id, as `SpoolBackend.deliveries_of` gives them."""

    event_id: str


class ListedDelivery(TypedDict):
    """One row of `SpoolBackend.list_deliveries`: a delivery and what its event is."""

    id: DeliveryId
    event_id: str
    type: str
    source: str
    handler: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_outcome: str | None
    last_error: str | None
    received_at: float


class EventDetail(TypedDict):
    """One event, its payload and its deliveries (`SpoolBackend.show`)."""

    id: str
    source: str
    type: str
    timestamp: int
    received_at: float
    payload: Any
    deliveries: list[Delivery]


class QueueStats(TypedDict):
    """What `SpoolBackend.stats` counts."""

    events: int
    deliveries: dict[str, int]
    """Deliveries per state, every one of `STATES` present."""
    handlers: dict[str, dict[str, int]]
    """Per handler (sorted by name), its deliveries per state (its dead letters too)."""
    sources: dict[str, dict[str, int]]
    """Per source (sorted by name), the deliveries of its events per state."""
    oldest_pending_seconds: float | None
    """Age of the oldest due pending delivery (rounded to ms), None if none is due."""


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries an operator means: each field set narrows them (None: any)."""

    state: str | None = None
    """One of `STATES`."""
    source: str | None = None
    handler: str | None = None
    event_type: str | None = None

    def matches(self, state: str, source: str, handler: str, event_type: str) -> bool:
        """Whether a delivery with these attributes is one of those meant."""
        return (
            (self.state is None or self.state == state)
            and (self.source is None or self.source == source)
            and (self.handler is None or self.handler == handler)
            and (self.event_type is None or self.event_type == event_type)
        )


class DeliveryPage(TypedDict):
    """One page of `SpoolBackend.list_page`, newest event first."""

    items: list[ListedDelivery]
    cursor: str | None
    """Where the next page starts (URL-safe, opaque), None after the last page."""


class ItemResult(TypedDict):
    """What `SpoolBackend.replay_items` or `purge_items` did with one id it was given."""

    id: str
    """As given: a delivery id, or an event id (all its deliveries)."""
    count: int
    """Deliveries replayed (or purged) for it."""
    state: str | None
    """When ``count`` is 0, why: the state its deliveries are in (the first one not dead),
    or None if there is no such delivery or event."""


class Taker(Protocol):
    """Who runs deliveries (the dispatcher), as a store that can start fresh ones at once
    sees it: a delivery the taker reserves is written already claimed, in the accept's own
    write, and handed to it once that write is on record, instead of being written pending
    and claimed by a second write."""

    def reserve(self, handlers: Sequence[str]) -> list[str]:
        """Which of ``handlers`` (of one event about to be accepted) would start now: each
        is held for it until `take`, which must follow whatever the accept's fate."""
        ...

    def take(self, reserved: Sequence[str], started: Sequence[Claimed]) -> None:
        """Let go of the ``reserved`` handlers, and run ``started`` (claims on record)."""
        ...


class SpoolBackend(Protocol):
    """Where accepted events wait for their handlers: what the server and dispatcher use
    (a store opened with role "daemon"), and what an operator's command uses (any role).

    The daemon's methods raise `SpoolUnavailable` when the store cannot be reached or
    written; the operator's (`stats` to `purge_dead`) raise `QueueError`.
    """

    recovered: int
    """Deliveries a crash had left running, made pending again at open (for the log)."""

    def describe(self) -> str:
        """Where the spool lives, for log lines (never a password)."""
        ...

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever this process added due work."""
        ...

    async def check(self) -> None:
        """Raise `SpoolUnavailable` if the store cannot take deliveries now (``/readyz``
        asks, so it must be cheap; the dispatcher asks while it waits out a fault)."""
        ...

    def expect_handlers(self, timeouts: dict[str, float]) -> None:
        """The handlers this process runs, each with its timeout: a delivery claimed longer
        ago than that (plus a grace) was abandoned by a process that died."""
        ...

    def hand_fresh_to(self, taker: Taker) -> None:
        """Offer each accepted delivery to ``taker`` first (see `Taker`); a store may
        ignore this, and every delivery is then claimed from the store."""
        ...

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """Store ``incoming`` with one pending delivery per handler, unless a duplicate.

        Raises `SpoolUnavailable` if it cannot be written, and `RateLimited` if
        ``incoming.limit`` is set and the source's bucket is empty (nothing is stored)."""
        ...

    async def claim(
        self, limit: int, caps: dict[str, int], now: float | None = None
    ) -> list[Claimed]:
        """Mark up to ``limit`` due deliveries running, oldest first, at most ``caps[h]``
        of handler ``h`` (handlers not in ``caps`` are skipped), and return them."""
        ...

    async def confirm(self, item: Claimed) -> bool:
        """Wait until the claim of ``item`` is on record (its attempt counted, its state
        running); False if it may no longer run (replayed or purged meanwhile).

        The dispatcher calls a handler only after this: a call whose attempt is not on
        record would be claimed and called again, without limit, while the store refuses
        writes. Raises `SpoolUnavailable` if the claim could not be recorded; the delivery
        then stays due, to be claimed again.
        """
        ...

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
        """Record how a call ended: done if ``outcome`` is "ok", dead if ``dead``, else
        pending again at ``next_attempt_at``."""
        ...

    async def release(self, delivery_ids: Iterable[DeliveryId]) -> None:
        """Make deliveries cut short by a stop pending again."""
        ...

    async def next_due(self, handlers: Iterable[str]) -> float | None:
        """When the earliest pending delivery of ``handlers`` is due (epoch seconds), or None."""
        ...

    async def deliveries_of(self, event_id: str) -> list[EventDelivery]:
        """Every delivery of one event, in the order they were accepted."""
        ...

    async def gauges(self, now: float | None = None) -> tuple[dict[str, int], float]:
        """Deliveries per state, and the age in seconds of the oldest due pending one."""
        ...

    async def purge_done(self, older_than: float, replay_window: float = 0.0) -> int:
        """Forget events all of whose deliveries are done, received more than
        ``older_than`` seconds ago; returns how many.

        A request signed less than ``replay_window`` seconds ago (see `replay_window`) could
        still pass the signature check, so the record that it was seen stays whatever
        ``older_than`` says: a replay of it is answered as a duplicate.
        """
        ...

    # --- the operator's actions (``frameiod queue``), while a daemon runs or not ---

    async def stats(self, now: float | None = None) -> QueueStats:
        """Deliveries per state and per handler, and the age of the oldest due pending one."""
        ...

    async def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[ListedDelivery]:
        """Up to ``limit`` deliveries, newest event first, optionally of one state and one
        handler."""
        ...

    async def show(self, event_id: str) -> EventDetail | None:
        """One event, its payload, and all its deliveries; None if there is no such event."""
        ...

    async def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """Make dead deliveries pending again, due now, with their attempts reset: every
        one if ``all_dead``, else those of ``ids`` (event ids: each dead delivery of the
        event; or delivery ids, as `list_deliveries` shows them). Returns how many."""
        ...

    async def purge_dead(self, older_than: float) -> int:
        """Delete dead deliveries that died more than ``older_than`` seconds ago, and the
        events left with nothing of theirs; returns how many deliveries went."""
        ...

    async def list_page(
        self, wanted: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage:
        """Up to ``limit`` deliveries ``wanted``, newest event first, from ``cursor`` (a
        page's ``cursor``; None: the newest). Events arriving meanwhile never shift a later
        page: it goes on from where the previous one ended. Raises `QueueError` for a cursor
        this store did not make."""
        ...

    async def event_of(self, delivery_id: str) -> str | None:
        """The event id of a delivery (an id as `list_page` gives it), None if none."""
        ...

    async def replay_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """`replay` for each of ``ids`` on its own, in order: what each replayed, or why not."""
        ...

    async def purge_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """Delete the dead deliveries of each of ``ids`` (delivery or event ids), and events
        left with nothing of theirs, as `purge_dead` does: what each purged, or why not."""
        ...

    async def replay_matching(self, wanted: DeliveryFilter) -> int:
        """`replay` every dead delivery ``wanted`` matches (its ``state`` is ignored)."""
        ...

    async def purge_matching(self, wanted: DeliveryFilter, older_than: float) -> int:
        """`purge_dead` the dead deliveries ``wanted`` matches (its ``state`` is ignored)."""
        ...

    async def close(self) -> None:
        """Finish what is queued and let go of the store."""
        ...


def encode_cursor(position: list[Any]) -> str:
    """A page's position (JSON values) as an opaque, URL-safe cursor."""
    text = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> list[Any]:
    """The position `encode_cursor` made; raise `QueueError` for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise BadCursor("not a cursor this store made") from None
    if not isinstance(position, list):
        raise BadCursor("not a cursor this store made")
    return position


def replay_window(tolerances: Iterable[float]) -> float:
    """How long after its timestamp a seen request must still be recognised: the largest
    ``tolerance`` in force, plus `REPLAY_MARGIN`."""
    return max(tolerances, default=0.0) + REPLAY_MARGIN


class Listeners:
    """Callbacks told that new work is due (the dispatcher's wake-up)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on every `notify`."""
        self._listeners.append(listener)

    def notify(self) -> None:
        """Tell every listener."""
        for listener in self._listeners:
            listener()
