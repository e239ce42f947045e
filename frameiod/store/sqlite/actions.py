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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from frameiod.store.base import (
    STATES,
    BadCursor,
    Delivery,
    DeliveryFilter,
    DeliveryPage,
    EventDetail,
    ItemResult,
    ListedDelivery,
    QueueError,
    QueueStats,
    decode_cursor,
    encode_cursor,
)
from frameiod.store.sqlite.schema import NEVER_JOINED

__all__ = [
    "connect_operator",
    "event_of",
    "list_deliveries",
    "list_page",
    "purge_dead",
    "purge_items",
    "purge_matching",
    "replay",
    "replay_items",
    "replay_matching",
    "show",
    "stats",
]

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
    sources: dict[str, dict[str, int]] = {}
    for source, state, count in conn.execute(
        "SELECT e.source, d.state, COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id"
        " GROUP BY e.source, d.state ORDER BY e.source"
    ):
        sources.setdefault(source, dict.fromkeys(STATES, 0))[state] = count
    events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {
        "events": events,
        "deliveries": states,
        "handlers": handlers,
        "sources": sources,
        "oldest_pending_seconds": round(now - oldest, 3) if oldest is not None else None,
    }


def list_deliveries(
    conn: sqlite3.Connection, state: str | None, handler: str | None, limit: int
) -> list[ListedDelivery]:
    """Deliveries, newest first, optionally of one state and one handler."""
    return list_page(conn, DeliveryFilter(state=state, handler=handler), limit, None)["items"]


def _where(wanted: DeliveryFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``deliveries d JOIN events e`` for the deliveries ``wanted``."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("d.state", wanted.state),
        ("d.handler", wanted.handler),
        ("e.source", wanted.source),
        ("e.type", wanted.event_type),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return clauses, args


def list_page(
    conn: sqlite3.Connection, wanted: DeliveryFilter, limit: int, cursor: str | None
) -> DeliveryPage:
    """Up to ``limit`` deliveries ``wanted``, newest first, after ``cursor``: the received
    time and delivery id of the last row of the page before (a keyset, so rows added
    meanwhile, newer than any, never shift the pages after)."""
    clauses, args = _where(wanted)
    if cursor is not None:
        try:
            received, last = (float(part) for part in decode_cursor(cursor))
        except (TypeError, ValueError):
            raise BadCursor("not a cursor this store made") from None
        clauses.append("(e.received_at < ? OR (e.received_at = ? AND d.id < ?))")
        args += [received, received, int(last)]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _dicts(
        conn.execute(
            "SELECT d.id, d.event_id, e.type, e.source, d.handler, d.state, d.attempts,"
            " d.next_attempt_at, d.last_outcome, d.last_error, e.received_at"
            f" FROM deliveries d JOIN events e ON e.id = d.event_id {where}"
            " ORDER BY e.received_at DESC, d.id DESC LIMIT ?",
            (*args, max(0, limit) + 1),
        )
    )
    items = cast(list[ListedDelivery], rows[: max(0, limit)])
    more = len(rows) > len(items) and items
    after = encode_cursor([items[-1]["received_at"], items[-1]["id"]]) if more else None
    return {"items": items, "cursor": after}


def event_of(conn: sqlite3.Connection, delivery_id: str) -> str | None:
    """The event id of delivery ``delivery_id`` (a number), None if there is none."""
    if not delivery_id.isdigit():
        return None
    row = conn.execute("SELECT event_id FROM deliveries WHERE id = ?", (int(delivery_id),))
    found = row.fetchone()
    return str(found[0]) if found else None


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


_REVIVE = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
    " updated_at = ? WHERE state = 'dead'"
)


def _column(item: str) -> str:
    """Which column an operator's id names: a delivery's (a number) or an event's."""
    return "id" if item.isdigit() else "event_id"


def _why_not(conn: sqlite3.Connection, item: str) -> str | None:
    """Why ``item`` had no dead delivery: the state of its deliveries (running first, the
    state a replay would most surprise), or None if it names none."""
    states = [
        row[0]
        for row in conn.execute(
            f"SELECT state FROM deliveries WHERE {_column(item)} = ?", (item,)
        ).fetchall()
    ]
    if not states:
        return None
    return "running" if "running" in states else states[0]


def replay(conn: sqlite3.Connection, ids: Sequence[str], all_dead: bool) -> int:
    """Make dead deliveries pending again, due now, with their attempts reset; ``ids`` are
    event ids (every dead delivery of the event) or delivery ids (numbers). Runs inside the
    caller's transaction; returns how many deliveries were replayed."""
    if all_dead:
        return replay_matching(conn, DeliveryFilter())
    return sum(result["count"] for result in replay_items(conn, ids))


def replay_items(conn: sqlite3.Connection, ids: Sequence[str]) -> list[ItemResult]:
    """`replay` of each of ``ids`` on its own, in the caller's transaction."""
    now = time.time()
    results: list[ItemResult] = []
    for item in ids:
        count = conn.execute(f"{_REVIVE} AND {_column(item)} = ?", (now, now, item)).rowcount
        results.append(
            {"id": item, "count": count, "state": "dead" if count else _why_not(conn, item)}
        )
    return results


def _matching(wanted: DeliveryFilter) -> tuple[str, list[Any]]:
    """Conditions on ``deliveries`` alone for the dead deliveries ``wanted`` matches."""
    clauses, args = [], []
    if wanted.handler is not None:
        clauses.append("handler = ?")
        args.append(wanted.handler)
    events, event_args = _where(DeliveryFilter(source=wanted.source, event_type=wanted.event_type))
    if events:
        clauses.append("event_id IN (SELECT e.id FROM events e WHERE " + " AND ".join(events) + ")")
        args += event_args
    return "".join(f" AND {clause}" for clause in clauses), args


def replay_matching(conn: sqlite3.Connection, wanted: DeliveryFilter) -> int:
    """`replay` every dead delivery ``wanted`` matches, in the caller's transaction."""
    now = time.time()
    clauses, args = _matching(wanted)
    return conn.execute(_REVIVE + clauses, (now, now, *args)).rowcount


def purge_dead(conn: sqlite3.Connection, older_than: float) -> int:
    """Delete dead deliveries last touched more than ``older_than`` seconds ago, and events
    left with no deliveries; runs inside the caller's transaction; returns how many
    deliveries went."""
    return purge_matching(conn, DeliveryFilter(), older_than)


def purge_matching(conn: sqlite3.Connection, wanted: DeliveryFilter, older_than: float) -> int:
    """`purge_dead` of the dead deliveries ``wanted`` matches, in the caller's transaction."""
    cutoff = time.time() - older_than
    clauses, args = _matching(wanted)
    dead = " FROM deliveries WHERE state = 'dead' AND updated_at < ?" + clauses
    events = conn.execute("SELECT DISTINCT event_id" + dead, (cutoff, *args)).fetchall()
    count = conn.execute("DELETE" + dead, (cutoff, *args)).rowcount
    _never_joined(conn, [event_id for (event_id,) in events])
    conn.execute(
        "DELETE FROM events WHERE received_at < ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
        (cutoff,),
    )
    return count


def _never_joined(conn: sqlite3.Connection, events: Iterable[str]) -> None:
    # A dead delivery purged leaves its event with deliveries that may never have run, and
    # no trace that one did: to coalescing's check, which asks whether any delivery has
    # started, it would look waiting, and a body joined to it would never reach the
    # handler that died. So the event stops matching any body.
    conn.executemany(
        "UPDATE events SET body_hash = ? WHERE id = ?", [(NEVER_JOINED, e) for e in events]
    )


def purge_items(conn: sqlite3.Connection, ids: Sequence[str]) -> list[ItemResult]:
    """Delete the dead deliveries of each of ``ids`` (delivery or event ids), and their
    events if left with no deliveries, in the caller's transaction."""
    results: list[ItemResult] = []
    for item in ids:
        column = _column(item)
        events = [
            row[0]
            for row in conn.execute(
                f"SELECT DISTINCT event_id FROM deliveries WHERE {column} = ? AND state = 'dead'",
                (item,),
            ).fetchall()
        ]
        count = conn.execute(
            f"DELETE FROM deliveries WHERE state = 'dead' AND {column} = ?", (item,)
        ).rowcount
        _never_joined(conn, events)
        conn.executemany(
            "DELETE FROM events WHERE id = ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
            [(event,) for event in events],
        )
        results.append(
            {"id": item, "count": count, "state": "dead" if count else _why_not(conn, item)}
        )
    return results
