"""Where accepted events wait for dispatch: the seam between the server and the dispatcher.

The server only ever calls `put`; the dispatcher only ever calls `get`. Today the queue is
in memory and bounded (a full queue is refused with 503, never silently dropped); the
durable SQLite spool will replace `MemorySpool` behind the same two calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from frameiod.events import WebhookEvent

__all__ = ["DEFAULT_CAPACITY", "Envelope", "MemorySpool", "Spool", "SpoolFull"]

DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True, slots=True)
class Envelope:
    """One accepted webhook delivery, as it travels from the server to the handlers."""

    id: str
    source: str
    event: WebhookEvent
    body: bytes
    received_at: float
    secret_id: str
    """Tag of the secret that verified the delivery (`frameiod.handlers.secret_id`)."""


class SpoolFull(Exception):
    """The spool cannot take another event now; the sender should retry later."""


class Spool(Protocol):
    """What the server and the dispatcher need from a spool."""

    async def put(self, envelope: Envelope) -> None:
        """Keep ``envelope`` for dispatch, or raise `SpoolFull`; returns once it is kept."""

    async def get(self) -> Envelope | None:
        """The next envelope to dispatch; None once the spool is closed and empty."""

    def close(self) -> None:
        """Take no more envelopes; `get` drains what is left, then returns None."""


class MemorySpool:
    """A bounded in-process queue: fast, and lost with the process (until the SQLite spool)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._queue: asyncio.Queue[Envelope | None] = asyncio.Queue(maxsize=capacity + 1)
        self._capacity = capacity
        self._closed = False

    def __len__(self) -> int:
        return self._queue.qsize()

    async def put(self, envelope: Envelope) -> None:
        """Queue ``envelope``; raise `SpoolFull` when closed or at capacity."""
        if self._closed or self._queue.qsize() >= self._capacity:
            raise SpoolFull("the in-memory queue is full" if not self._closed else "closed")
        self._queue.put_nowait(envelope)

    async def get(self) -> Envelope | None:
        """Wait for the next envelope; None after `close` once the queue is drained."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # let every other waiting consumer see the end too
        return item

    def close(self) -> None:
        """Stop accepting; the sentinel sorts after everything already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
