"""The daemon's SQL on the spool: accept, claim, mark, purge and count. Each is a function of
the writer's (or the reader's) connection, run inside the writer's current batch."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from frameiod.store.base import STATES, Accepted, Claimed, DeliveryId, EventDelivery, Incoming
from frameiod.store.sqlite.schema import (
    SCHEMA_VERSION,
    body_hash,
    body_key,
    connect_reader,
    none_started,
    request_key,
)
from frameiod.store.sqlite.unstarted import Unstarted

__all__ = [
    "OutcomeRow",
    "accept",
    "claim",
    "count_states",
    "deliveries_of",
    "finish",
    "gauges",
    "next_due",
    "probe",
    "purge",
    "recover_running",
    "release",
    "rows",
    "unclaim",
]


def rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """The rows of ``cursor`` as dicts by column name."""
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def recover_running(conn: sqlite3.Connection) -> int:
    """Make the deliveries a crash left running pending again; return how many."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return conn.execute(
            "UPDATE deliveries SET state = 'pending', updated_at = ? WHERE state = 'running'",
            (time.time(),),
        ).rowcount


# One query for every kind of duplicate (each statement costs a trip through the GIL):
# the same signed request again (Frame.io's retry, or a replay), as an event or as a
# request coalesced earlier, or an identical body none of whose deliveries has started
# (that run will see the latest state). The second column says it was the last kind.
_DUPLICATE = (
    "SELECT id, 0 FROM events WHERE timestamp = :ts AND request_key = :key"
    " AND signature = :sig AND source = :source"
    " UNION ALL"
    " SELECT event_id, 0 FROM seen_requests WHERE timestamp = :ts AND request_key = :key"
    " AND signature = :sig AND source = :source"
    " UNION ALL"
    " SELECT e.id, 1 FROM events e WHERE e.id = :candidate AND e.body_hash = :digest"
    " AND e.source = :source AND e.secret_id = :secret"
    " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)"
    f" AND {none_started('e.id')}"
    " LIMIT 1"
)


def accept(
    conn: sqlite3.Connection,
    incoming: Incoming,
    handlers: Sequence[str],
    unstarted: Unstarted,
    starting: Sequence[str] = (),
) -> Accepted:
    """Insert ``incoming`` with a pending delivery per handler, those of ``starting``
    already claimed (running, their attempt counted) instead; or find it a duplicate.
    ``unstarted`` names the event an identical body may join, and learns of this one."""
    digest = body_hash(incoming.body)
    keys = (request_key(incoming.signature), body_key(digest))
    joinable = (incoming.source, incoming.secret_id, keys[1])
    candidate = unstarted.candidate(*joinable)
    row = conn.execute(
        _DUPLICATE,
        {
            "ts": incoming.timestamp,
            "key": keys[0],
            "sig": incoming.signature,
            "source": incoming.source,
            "candidate": candidate,
            "digest": digest,
            "secret": incoming.secret_id,
        },
    ).fetchone()
    if row is None and candidate is not None:
        unstarted.started(*joinable, candidate)  # it has started, or is gone
    if row:
        if row[1]:
            # Joined a pending event: nothing else records this request, and once that
            # event's run has begun a replay of it would no longer be coalesced.
            conn.execute(
                "INSERT INTO seen_requests (source, timestamp, request_key, signature, event_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (incoming.source, incoming.timestamp, keys[0], incoming.signature, row[0]),
            )
        return Accepted(row[0], duplicate=True, deliveries=0)
    conn.execute(
        "INSERT INTO events (id, source, type, body, body_hash, timestamp, signature,"
        " secret_id, received_at, request_key, trace_context)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            incoming.id,
            incoming.source,
            incoming.type,
            incoming.body,
            digest,
            incoming.timestamp,
            incoming.signature,
            incoming.secret_id,
            incoming.received_at,
            keys[0],
            incoming.trace_context,
        ),
    )
    started = []
    # In the handlers' order, one row each: ids keep the order deliveries were listed in.
    for handler in handlers:
        run = handler in starting
        delivery_id = conn.execute(
            "INSERT INTO deliveries (event_id, handler, state, attempts, next_attempt_at,"
            " updated_at, body_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                incoming.id,
                handler,
                "running" if run else "pending",
                int(run),
                incoming.received_at,
                incoming.received_at,
                keys[1],
            ),
        ).lastrowid
        if run:
            started.append(
                Claimed(
                    delivery_id,
                    incoming.id,
                    handler,
                    1,
                    incoming.source,
                    incoming.body,
                    incoming.timestamp,
                    incoming.received_at,
                    incoming.trace_context,
                )
            )
    if handlers and not started:
        unstarted.waiting(*joinable, incoming.id)
    return Accepted(incoming.id, duplicate=False, deliveries=len(handlers), started=tuple(started))


def purge(conn: sqlite3.Connection, received_before: float, signed_before: float) -> int:
    """Delete finished events received before ``received_before`` and the record of
    requests signed before ``signed_before``; return how many events went."""
    conn.execute("DELETE FROM seen_requests WHERE timestamp < ?", (signed_before,))
    return conn.execute(
        "DELETE FROM events WHERE received_at < ? AND timestamp < ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state != 'done')",
        (received_before, signed_before),
    ).rowcount


def claim(
    conn: sqlite3.Connection, limit: int, caps: dict[str, int], now: float, unstarted: Unstarted
) -> list[Claimed]:
    """Mark up to ``limit`` due deliveries ``running`` (at most ``caps[h]`` of handler
    ``h``), oldest first, counting their attempt; return them. Their events leave
    ``unstarted``."""
    # One indexed query per handler, each taking at most what that handler may start: a
    # backlog of one capped handler can never hide the due deliveries of the others.
    rows = []
    for handler, room in caps.items():
        if room <= 0:  # SQLite would read a negative LIMIT as "no limit"
            continue
        rows += conn.execute(
            "SELECT d.next_attempt_at, d.id, d.event_id, d.handler, d.attempts, e.source,"
            " e.body, e.timestamp, e.received_at, e.trace_context, e.secret_id, d.body_key"
            " FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.handler = ?"
            " AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (handler, now, min(room, limit)),
        ).fetchall()
    rows.sort()  # oldest first across handlers
    claimed = []
    # ``event``: source, body, timestamp, received_at and trace context, as Claimed has them.
    for _, delivery_id, event_id, handler, attempts, *event, secret_id, key in rows[:limit]:
        unstarted.started(event[0], secret_id, key, event_id)
        claimed.append(Claimed(delivery_id, event_id, handler, attempts + 1, *event))
    if claimed:
        conn.executemany(
            "UPDATE deliveries SET state = 'running', attempts = attempts + 1, updated_at = ?"
            " WHERE id = ?",
            [(now, item.delivery_id) for item in claimed],
        )
    return claimed


OutcomeRow = tuple[str, str, str | None, float, float | None, float, DeliveryId]
"""A call's end, as `finish` writes it: state, outcome, error, seconds, the next attempt's
time (None: unchanged), now, and the delivery's id."""


def finish(conn: sqlite3.Connection, rows: Sequence[OutcomeRow]) -> None:
    """Record the end of each call in ``rows``."""
    conn.executemany(
        "UPDATE deliveries SET state = ?, last_outcome = ?, last_error = ?,"
        " last_seconds = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
        " updated_at = ? WHERE id = ?",
        rows,
    )


def unclaim(conn: sqlite3.Connection, event_id: str) -> int:
    """Make the deliveries an accept wrote claimed pending again, unattempted: nobody took
    them (`Spool.accept` was cut off). Return how many there were."""
    return conn.execute(
        "UPDATE deliveries SET state = 'pending', attempts = 0 WHERE event_id = ?"
        " AND state = 'running' AND attempts = 1 AND last_outcome IS NULL",
        (event_id,),
    ).rowcount


def release(conn: sqlite3.Connection, ids: list[tuple[float, DeliveryId]]) -> None:
    """Make running deliveries pending again: ``ids`` are (now, delivery id) pairs."""
    conn.executemany(
        "UPDATE deliveries SET state = 'pending', updated_at = ? WHERE id = ?"
        " AND state = 'running'",
        ids,
    )


def next_due(conn: sqlite3.Connection, handlers: list[str]) -> float | None:
    """When the earliest pending delivery of ``handlers`` is due."""
    sql = (
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        f" AND handler IN ({','.join('?' * len(handlers))})"
    )
    return conn.execute(sql, handlers).fetchone()[0]


def deliveries_of(conn: sqlite3.Connection, event_id: str) -> list[EventDelivery]:
    """Every delivery of one event, in the order they were accepted."""
    cursor = conn.execute(
        "SELECT id, handler, state, attempts, next_attempt_at, last_outcome, last_error,"
        " last_seconds, updated_at, event_id FROM deliveries WHERE event_id = ? ORDER BY id",
        (event_id,),
    )
    return cast(list[EventDelivery], rows(cursor))


def probe(conn: sqlite3.Connection) -> None:
    """A write that changes nothing: whether the spool takes writes again."""
    # Rewrites the header's schema version with its own value: a page written and committed
    # like any delivery's, and nothing changed.
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def count_states(path: Path, now: float) -> tuple[dict[str, int], float]:
    """`gauges`, on a connection of its own."""
    conn = connect_reader(path)
    try:
        return gauges(conn, now)
    finally:
        conn.close()


def gauges(conn: sqlite3.Connection, now: float) -> tuple[dict[str, int], float]:
    """Deliveries per state, and the age in seconds of the oldest due pending one."""
    counts = dict.fromkeys(STATES, 0)
    counts.update(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))
    oldest = conn.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        " AND next_attempt_at <= ?",
        (now,),
    ).fetchone()[0]
    return counts, (now - oldest) if oldest is not None else 0.0
