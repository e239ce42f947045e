"""Which waiting event an identical body may join: kept in memory, not in an index.

Coalescing (docs/delivery.md, "Duplicates") asks at every accept for the newest event
with the same body none of whose deliveries has started. An index keyed by the body's hash
would answer, but a hash is random: with a backlog waiting, each accept would insert into
a random page of that index and each claim delete from another, and every commit writes
each page it touched to the WAL. So the writer thread keeps the answer here, and
`operations.accept` checks the event it names in SQL, by primary key, before joining it:
an entry gone stale costs a missed coalescing, never a wrong one.

It knows the events this process accepted and those waiting when the spool was opened,
up to `REMEMBERED` of them at once, so that a backlog on disk does not grow the daemon's
memory without bound. An event it does not know (past that many, or made pending again
later: a dead letter replayed, an accept cut off at its deadline) is not joined: an
identical body then runs on its own, as one identical to a started event does.
"""

from __future__ import annotations

import sqlite3

__all__ = ["REMEMBERED", "Unstarted"]

REMEMBERED = 100_000
"""Waiting events remembered at most (about 170 bytes each)."""


class Unstarted:
    """Body key → the newest event with that body whose deliveries all wait unstarted.

    Used by the writer thread only (and by the thread that opens the spool, before it).
    """

    __slots__ = ("_events", "limit")

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._events: dict[int, str] = {}
        self.limit = limit

    def load(self, conn: sqlite3.Connection) -> None:
        """Start from the newest deliveries waiting in the spool, unattempted."""
        newest = conn.execute(
            "SELECT body_key, event_id FROM deliveries"
            " WHERE state = 'pending' AND attempts = 0 ORDER BY id DESC LIMIT ?",
            (self.limit,),
        ).fetchall()
        # Oldest first, so that of two events with one body the newer is the one kept.
        self._events = dict(reversed(newest))

    def candidate(self, key: int) -> str | None:
        """The event a body with ``key`` may join, to be checked in SQL; None if none."""
        return self._events.get(key)

    def waiting(self, key: int, event_id: str) -> None:
        """``event_id`` was written with every delivery pending and unattempted."""
        if len(self._events) < self.limit or key in self._events:
            self._events[key] = event_id

    def started(self, key: int, event_id: str) -> None:
        """``event_id`` can no longer be joined: a delivery of it started, or the spool
        said no when it was a candidate."""
        if self._events.get(key) == event_id:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)
