"""The seam between frameiod and its durable store: what the server, the dispatcher and the
operator's commands use, the errors they branch on, and replay protection's window.

`frameiod.store.sqlite.Spool` and `frameiod.store.redis.RedisSpool` implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "REPLAY_MARGIN",
    "Accepted",
    "Claimed",
    "DeliveryId",
    "Incoming",
    "Listeners",
    "SpoolBackend",
    "SpoolError",
    "SpoolUnavailable",
    "replay_window",
]

REPLAY_MARGIN = 60.0
"""Seconds a seen request is remembered beyond the largest tolerance (clock skew)."""


class SpoolError(Exception):
    """The spool cannot be used at all (unreadable, corrupt, wrong settings): stop start-up."""


class SpoolUnavailable(Exception):
    """The spool cannot take writes right now (disk full, read-only); ``reason`` says which.

    Callers answer 503 with Retry-After: nothing was committed, and the sender retries.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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


@dataclass(frozen=True, slots=True)
class Accepted:
    """The spool's answer to an incoming delivery."""

    id: str
    """The event id to give the sender: the new one, or the original's for a duplicate."""
    duplicate: bool
    deliveries: int


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


class SpoolBackend(Protocol):
    """Where accepted events wait for their handlers: what the server and dispatcher use.

    Every method raises `SpoolUnavailable` when the store cannot be reached or written.
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

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """Store ``incoming`` with one pending delivery per handler, unless a duplicate."""
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

    async def deliveries_of(self, event_id: str) -> list[dict[str, Any]]:
        """Every delivery of one event: ``handler``, ``state``, ``attempts``,
        ``last_outcome``, ``last_error``, ``last_seconds`` per row."""
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

    async def close(self) -> None:
        """Finish what is queued and let go of the store."""
        ...


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
