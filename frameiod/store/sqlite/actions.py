"""The operator's queries on the SQLite spool (``frameiod queue``), while a daemon runs or not.

Each is a function of one connection. A daemon's spool runs the reads on its read-only
connection and the writes (replay, purge) in its writer's next batch; an operator's spool
runs both on a connection of its own, whose writes wait for the daemon's batches through
SQLite's busy timeout (WAL lets its reads go on meanwhile). The daemon notices replayed
deliveries within seconds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from frameiod.store.base import (
    STATES,
    Delivery,
    EventDetail,
    ListedDelivery,
    QueueError,
    QueueStats,
)

__all__ = ["connect_operator", "list_deliveries", "purge_dead", "replay", "show", "stats"]

OPERATOR_BUSY_MS = 10_000
"""How long an operator's write waits for the daemon's transactions before it gives up."""


def connect_operator(path: Path) -> sqlite3.Connection:
    """Open an existing spool for an operator; raise `QueueError` if there is none or it
    cannot be opened. Nothing is created, recovered or changed."""
    if not path.exists():
        raise QueueError(f"no spool at {path} (frameiod creates it on its first run)")
    try:
        # as_uri() percent-encodes the path: a "#" or "?" in it must not end the file name.
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {OPERATOR_BUSY_MS}")
    except sqlite3.Error as exc:
        raise QueueError(f"{path}: cannot open the spool: {exc}") from None
    return conn


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    """Deliveries per state and per handler, and the age of the oldest due pending one."""
    states = dict.fromkeys(STATES, 0)
    handlers: dict[str, dict[str, int]] = {}
    for handler, state, count in conn.execute(
        "SELECT handler, state, COUNT(*) FROM deliveries GROUP BY handler, state ORDER BY handler"
    ):
        states[state] += count
        handlers.setdefault(handler, dict.fromkeys(STATES, 0))[state] = count
    oldest = conn.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        " AND next_attempt_at <= ?",
        (now,),
    ).fetchone()[0]
    events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {
        "events": events,
        "deliveries": states,
        "handlers": handlers,
        "oldest_pending_seconds": round(now - oldest, 3) if oldest is not None else None,
    }


def list_deliveries(
    conn: sqlite3.Connection, state: str | None, handler: str | None, limit: int
) -> list[ListedDelivery]:
    """Deliveries, newest first, optionally of one state and one handler."""
    clauses, args = [], []
    if state:
        clauses.append("d.state = ?")
        args.append(state)
    if handler:
        clauses.append("d.handler = ?")
        args.append(handler)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor = conn.execute(
        "SELECT d.id, d.event_id, e.type, e.source, d.handler, d.state, d.attempts,"
        " d.next_attempt_at, d.last_outcome, d.last_error, e.received_at"
        f" FROM deliveries d JOIN events e ON e.id = d.event_id {where}"
        " ORDER BY e.received_at DESC, d.id DESC LIMIT ?",
        (*args, limit),
    )
    return cast(list[ListedDelivery], _dicts(cursor))


def show(conn: sqlite3.Connection, event_id: str) -> EventDetail | None:
    """One event, its payload, and all its deliveries; None if there is no such event."""
    found = _dicts(
        conn.execute(
            "SELECT id, source, type, timestamp, received_at, body FROM events WHERE id = ?",
            (event_id,),
        )
    )
    if not found:
        return None
    event = found[0]
    event["payload"] = json.loads(event.pop("body"))
    event["deliveries"] = cast(
        list[Delivery],
        _dicts(
            conn.execute(
                "SELECT id, handler, state, attempts, next_attempt_at, last_outcome,"
                " last_error, last_seconds, updated_at FROM deliveries WHERE event_id = ?"
                " ORDER BY id",
                (event_id,),
            )
        ),
    )
    return cast(EventDetail, event)


def replay(conn: sqlite3.Connection, ids: Sequence[str], all_dead: bool) -> int:
    """Make dead deliveries pending again, due now, with their attempts reset; ``ids`` are
    event ids (every dead delivery of the event) or delivery ids (numbers). Runs inside the
    caller's transaction; returns how many deliveries were replayed."""
    now = time.time()
    update = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
        " updated_at = ? WHERE state = 'dead'"
    )
    if all_dead:
        return conn.execute(update, (now, now)).rowcount
    count = 0
    for item in ids:
        column = "id" if item.isdigit() else "event_id"
        count += conn.execute(f"{update} AND {column} = ?", (now, now, item)).rowcount
    return count


def purge_dead(conn: sqlite3.Connection, older_than: float) -> int:
    """Delete dead deliveries last touched more than ``older_than`` seconds ago, and events
    left with no deliveries; runs inside the caller's transaction; returns how many
    deliveries went."""
    cutoff = time.time() - older_than
    count = conn.execute(
        "DELETE FROM deliveries WHERE state = 'dead' AND updated_at < ?", (cutoff,)
    ).rowcount
    conn.execute(
        "DELETE FROM events WHERE received_at < ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
        (cutoff,),
    )
    return count
