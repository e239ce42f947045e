"""The spool file's schema: creating it, recognising a frameiod spool, upgrading an older
one in place, and the connections the spool opens on it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Literal

from frameiod.logs import get_logger
from frameiod.store.base import STATES, SpoolError
from frameiod.store.sqlite.files import (
    access_problem,
    create_private,
    is_permission_error,
    make_folder,
    not_permitted,
    tighten,
)

__all__ = [
    "APPLICATION_ID",
    "AUTOCHECKPOINT_PAGES",
    "NEVER_JOINED",
    "SCHEMA_VERSION",
    "Synchronous",
    "body_hash",
    "body_key",
    "connect_reader",
    "connect_writer",
    "none_started",
    "request_key",
]

log = get_logger("frameiod.spool")

SCHEMA_VERSION = 6
APPLICATION_ID = int.from_bytes(b"fiod", "big")
"""frameiod's mark in a spool file's header (``PRAGMA application_id``)."""
AUTOCHECKPOINT_PAGES = 10_000
"""WAL pages after which the writer's commit checkpoints by itself: only a backstop should
the checkpointer thread (`frameiod.store.sqlite.checkpointer`) fall behind."""

Synchronous = Literal["FULL", "NORMAL"]

# A chain of ORs, not ``state IN (...)``: SQLite builds a temporary table for an IN list
# each time it checks one, so every INSERT and UPDATE of a delivery paid for one.
_STATE_CHECK = " OR ".join(f"state = '{state}'" for state in STATES)
_DELIVERIES = f"""(
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler TEXT NOT NULL,
    state TEXT NOT NULL CHECK ({_STATE_CHECK}),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_outcome TEXT,
    last_error TEXT,
    last_seconds REAL,
    updated_at REAL NOT NULL,
    body_key INTEGER NOT NULL DEFAULT 0
)"""
_DELIVERY_COLUMNS = (
    "id, event_id, handler, state, attempts, next_attempt_at, last_outcome, last_error,"
    " last_seconds, updated_at, body_key"
)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    body_hash BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    signature TEXT NOT NULL,
    secret_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    request_key INTEGER NOT NULL,
    trace_context TEXT
);
CREATE INDEX IF NOT EXISTS events_request_key ON events (timestamp, request_key);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS deliveries {_DELIVERIES};
CREATE INDEX IF NOT EXISTS deliveries_due_by_handler
    ON deliveries (state, handler, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE TABLE IF NOT EXISTS seen_requests (
    source TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    request_key INTEGER NOT NULL,
    signature TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_requests_key ON seen_requests (timestamp, request_key);
"""
# The duplicate checks look events up by 64-bit keys (see `request_key` and `body_key`),
# not by the 67-character signature and 32-byte hash themselves: with every commit writing
# whole index pages to the WAL, the wide random keys cost more than the rest of an accept.
# The request index leads with the timestamp, so new entries land in its newest pages.
# The body key is not indexed: which waiting event an identical body may join is kept in
# memory (`frameiod.store.sqlite.unstarted`), since an index of random keys would write a
# random page per accept and per claim. Deliveries carry it, to rebuild that at start.
# A request coalesced into a pending event leaves no event of its own: `seen_requests`
# remembers it (and the event it joined) for replay protection, pruned like the events.
# No foreign key: the event may be purged while the request could still be replayed.

# Schema 1 (frameiod before the 64-bit keys) becomes 2 in place, on first open; schema 2
# becomes 3 as `_SCHEMA` creates the seen_requests table it lacks; schema 3 becomes 4 by
# `_UPGRADE_TO_4`, in the same transaction (its events simply have no trace context);
# schema 4 becomes 5 by `_UPGRADE_TO_5`, which copies the deliveries into a table with
# today's state check (SQLite cannot change a check in place) and `_SCHEMA` then indexes;
# schema 5 becomes 6 by `_UPGRADE_TO_6`, which drops the index of unstarted bodies.
_UPGRADE_FROM_1 = """
ALTER TABLE events ADD COLUMN request_key INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN body_key INTEGER NOT NULL DEFAULT 0;
UPDATE events SET request_key = frameiod_request_key(signature);
UPDATE deliveries SET body_key = (
    SELECT frameiod_body_key(body_hash) FROM events WHERE events.id = deliveries.event_id
);
DROP INDEX IF EXISTS events_request;
DROP INDEX IF EXISTS events_body;
"""
_UPGRADE_TO_4 = "ALTER TABLE events ADD COLUMN trace_context TEXT;"
_UPGRADE_TO_5 = f"""
CREATE TABLE deliveries_5 {_DELIVERIES};
INSERT INTO deliveries_5 ({_DELIVERY_COLUMNS}) SELECT {_DELIVERY_COLUMNS} FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_5 RENAME TO deliveries;
"""
_UPGRADE_TO_6 = "DROP INDEX IF EXISTS deliveries_unstarted_body;"
# Every table and index a frameiod spool has held, whatever its schema: how an unmarked
# spool is known.
_SPOOL_OBJECTS = frozenset(
    (
        "events",
        "deliveries",
        "events_request",
        "events_body",
        "events_request_key",
        "events_received",
        "deliveries_unstarted_body",
        "deliveries_due_by_handler",
        "deliveries_event",
        "seen_requests",
        "seen_requests_key",
    )
)


def connect_writer(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """Open the spool file, create the schema, and prove the settings took."""
    make_folder(path)
    if problem := access_problem(path):
        raise SpoolError(problem)
    try:
        created = create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise SpoolError(f"{path}: cannot open the spool: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        # Identified before anything is written: another application's file is left as is.
        version = _identify(conn, path)
        if not created:
            tighten(path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        if mode.lower() != "wal" or level != {"FULL": 2, "NORMAL": 1}[synchronous]:
            raise SpoolError(
                f"{path}: SQLite refused the spool settings (journal_mode={mode}, "
                f"synchronous={level}; wanted wal and {synchronous}); is the file on a "
                "filesystem that supports WAL?"
            )
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise SpoolError(f"{path}: the spool is corrupt ({check}); move it aside to start")
        if version == 1:
            _upgrade_from_1(conn)
        # One transaction: a crash half-way must not leave a file that looks like no spool.
        # It also creates what an older schema lacks (IF NOT EXISTS leaves the rest alone).
        upgrade = "".join(
            script
            for below, script in ((4, _UPGRADE_TO_4), (5, _UPGRADE_TO_5), (6, _UPGRADE_TO_6))
            if 0 < version < below
        )
        conn.executescript(
            f"BEGIN IMMEDIATE; {upgrade} {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"
            f" PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
        )
        if 0 < version < SCHEMA_VERSION:
            log.info(
                "spool upgraded", spool=str(path), schema_from=version, schema_to=SCHEMA_VERSION
            )
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_permission_error(exc):
            raise SpoolError(not_permitted(path, str(exc))) from None
        raise SpoolError(
            f"{path}: the spool cannot be read ({exc}); it is not a frameiod spool or it is "
            "damaged. Move it aside to start with an empty spool."
        ) from None
    except SpoolError:
        conn.close()
        raise
    return conn


def _identify(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a frameiod spool (0 for a new, empty file); raise `SpoolError`
    for a file that belongs to something else, or to a newer frameiod."""
    application = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    }
    if application not in (0, APPLICATION_ID):
        raise _not_a_spool(path, f"application_id {application:#x}")
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"{path}: the spool was written by a newer frameiod (schema {version}, this "
            f"frameiod knows {SCHEMA_VERSION}); upgrade frameiod or point [spool] path "
            "elsewhere"
        )
    if application == APPLICATION_ID or (version == 0 and not tables):
        return version
    # Unmarked: frameiod before the mark, or someone else's database. Only the former has
    # exactly frameiod's tables and a schema version it wrote; it is marked once opened.
    if version >= 1 and {"events", "deliveries"} <= tables <= _SPOOL_OBJECTS:
        log.info("spool marked as frameiod's", spool=str(path), schema=version)
        return version
    found = ", ".join(sorted(tables)) or "none"
    raise _not_a_spool(path, f"schema version {version}, tables and indexes: {found}")


def _not_a_spool(path: Path, evidence: str) -> SpoolError:
    return SpoolError(
        f"{path}: this is not a frameiod spool ({evidence}); frameiod did not touch it. "
        "Point [spool] path at a file of frameiod's own (a new path starts an empty spool)."
    )


def connect_reader(path: Path) -> sqlite3.Connection:
    """A second connection for the dispatcher's reads; it never writes."""
    conn = sqlite3.connect(
        f"{path.absolute().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def body_hash(body: bytes) -> bytes:
    """The hash identical bodies share (for coalescing)."""
    return hashlib.sha256(body).digest()


NEVER_JOINED = b""
"""The `body_hash` of an event that no identical body may join any more, since a dead
letter of it was purged (`frameiod.store.sqlite.actions`): no body hashes to it."""


def none_started(event_id: str) -> str:
    """SQL, true while no delivery of the event ``event_id`` names (a column) has started:
    each is pending and was never attempted. Only such an event may an identical body join
    (docs/delivery.md, "Duplicates"): the accept's check and `Unstarted.load` both ask it."""
    return (
        "NOT EXISTS (SELECT 1 FROM deliveries started"
        f" WHERE started.event_id = {event_id}"
        " AND (started.state != 'pending' OR started.attempts > 0))"
    )


def body_key(digest: bytes) -> int:
    """The indexed 64-bit key of a `body_hash` (its first 8 bytes, as SQLite's integer)."""
    return int.from_bytes(digest[:8], "big", signed=True)


def request_key(signature: str) -> int:
    """The indexed 64-bit key of a request's signature header."""
    digest = hashlib.blake2b(signature.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    conn.create_function("frameiod_request_key", 1, request_key, deterministic=True)
    conn.create_function("frameiod_body_key", 1, body_key, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _UPGRADE_FROM_1.split(";")):
            conn.execute(statement)
        # Schema 2: `connect_writer` takes it on from there, like any other spool of schema 2.
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    except sqlite3.Error:
        conn.rollback()
        raise
