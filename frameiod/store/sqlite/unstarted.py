"""Which waiting event an identical body may join: kept in memory, not in an index.

Coalescing (docs/delivery.md, "Duplicates") asks at every accept for the newest event of
the same source and secret, with the same body, none of whose deliveries has started. An
index keyed by the body's hash would answer, but a hash is random: with a backlog
waiting, each accept would insert into a random page of that index and each claim delete
from another, and every commit writes each page it touched to the WAL. So the writer
thread keeps the answer here, and `operations.accept` checks the event it names in SQL,
by primary key, before joining it: an entry gone stale costs a missed coalescing, never a
wrong one.

It knows the events this process accepted and those waiting when the spool was opened,
up to `REMEMBERED` of them at once, so that a backlog on disk does not grow the daemon's
memory without bound. An event it does not know is not joined, and an identical body
then runs on its own, as one identical to a started event does: past that many, or made
pending again while the daemon runs (a dead letter replayed, an accept cut off at its
deadline), or forgotten by a claim whose write the spool refused (a full disk). The next
start knows them again.
"""

from __future__ import annotations

import sqlite3

from frameiod.store.sqlite.schema import NEVER_JOINED, none_started

__all__ = ["REMEMBERED", "Unstarted"]

REMEMBERED = 100_000
"""Waiting events remembered at most (about 170 bytes each)."""


def _key(source: str, secret_id: str, body_key: int) -> int:
    # One int per event, as small as the body key alone. Two bodies whose keys collide
    # only miss a coalescing: the check in SQL compares the real source, secret and hash.
    return hash((source, secret_id, body_key))


class Unstarted:
    """The newest event of each source, secret and body whose deliveries all wait
    unstarted. Used by the writer thread only (and before it starts, by `load`)."""

    __slots__ = ("_events", "limit")

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._events: dict[int, str] = {}
        self.limit = limit

    def load(self, conn: sqlite3.Connection) -> None:
        """Start from the newest events waiting in the spool, none of their deliveries
        started, nor purged (`NEVER_JOINED`)."""
        events: dict[int, str] = {}
        rows = conn.execute(
            "SELECT e.source, e.secret_id, d.body_key, d.event_id FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.attempts = 0"
            f" AND {none_started('d.event_id')} AND e.body_hash != ?"
            " ORDER BY d.id DESC",
            (NEVER_JOINED,),
        )
        for source, secret_id, body_key, event_id in rows:
            if len(events) >= self.limit:
                break
            events.setdefault(_key(source, secret_id, body_key), event_id)  # newest first
        self._events = events

    def candidate(self, source: str, secret_id: str, body_key: int) -> str | None:
        """The event a body may join, to be checked in SQL; None if none."""
        return self._events.get(_key(source, secret_id, body_key))

    def waiting(self, source: str, secret_id: str, body_key: int, event_id: str) -> None:
        """``event_id`` was written with every delivery pending and unattempted."""
        key = _key(source, secret_id, body_key)
        if len(self._events) < self.limit or key in self._events:
            self._events[key] = event_id

    def started(self, source: str, secret_id: str, body_key: int, event_id: str) -> None:
        """``event_id`` can no longer be joined: a delivery of it started, or the spool
        said no when it was a candidate."""
        key = _key(source, secret_id, body_key)
        if self._events.get(key) == event_id:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)
