"""The durable spool: accepted events and their per-handler deliveries, in one SQLite file.

An event is committed, with one delivery row per matching handler, before the 202 goes
out. All SQLite work runs on one writer thread that owns the connection; operations that
arrive while it is busy form the next batch and share one transaction and one fsync
(group commit), so throughput does not collapse to one fsync per request. When the daemon
gives the spool a hand-over (`frameiod.store.base.HandOver`: its event loop calls back when
it has taken in every request that has arrived, or after `_HOLD_AT_MOST` while it stays
busy), operations are handed to the writer together then: a request that is already here
does not miss the commit and wait for the next one. Without one, or on a loop the hand-over
cannot serve, each operation goes to the writer at once.
If anything in a batch fails, the batch is run again with a savepoint per operation, so a
failing operation fails alone; operations must therefore touch nothing but the database. (A full
disk is the exception: SQLite then rolls back the whole transaction, and every operation
of that batch is reported failed, none falsely reported committed.)

Delivery states: ``pending`` (due at ``next_attempt_at``), ``running``, ``done``, ``dead``.

Claims read due deliveries on a second, read-only connection (WAL lets it read while the
writer commits) and queue the "running" mark behind them without waiting for it: under a
full ingest load the writer's queue is long, and a dispatcher that waited in it for every
claim started only a few hundred calls a second. Until its outcome is written, a claimed
delivery is kept out of later claims in memory (this process is the only dispatcher).

`SpoolBackend` is the interface the server and the dispatcher use; `Spool` (here) and
`frameiod.store.redis.RedisSpool` implement it, and `frameiod.store.open` picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from frameiod.logs import LastingFault, get_logger
from frameiod.store import sqlite_queue
from frameiod.store.base import (
    REPLAY_MARGIN,
    STATES,
    Accepted,
    Claimed,
    DeliveryId,
    EventDelivery,
    EventDetail,
    HandOver,
    Incoming,
    ListedDelivery,
    Listeners,
    QueueError,
    QueueStats,
    Role,
    SpoolError,
    SpoolUnavailable,
)

__all__ = [
    "APPLICATION_ID",
    "PRIVATE_MODE",
    "REPLAY_MARGIN",
    "SCHEMA_VERSION",
    "Accepted",
    "Claimed",
    "DeliveryId",
    "Incoming",
    "Spool",
    "SpoolError",
    "SpoolUnavailable",
]

log = get_logger("frameiod.spool")

SCHEMA_VERSION = 3
APPLICATION_ID = int.from_bytes(b"fiod", "big")
"""frameiod's mark in a spool file's header (``PRAGMA application_id``)."""
PRIVATE_MODE = 0o600
"""The spool holds raw bodies and signatures: its files are readable by the owner only."""
"""Seconds a seen request is remembered past the largest tolerance: receivers' clocks (or
one clock, stepped) may disagree, and the signature check is judged on the clock of the
receiver a replay reaches."""
_ERROR_LIMIT = 2000  # characters of the last error kept per delivery
_BATCH_LIMIT = 256
# How long an operation may wait on a busy event loop before it goes to the writer. Every
# commit costs an fsync at FULL (on the bench machine 70 µs of CPU, on the core the event
# loop needs): under a load that keeps the loop busy, this is about how often one begins.
_HOLD_AT_MOST = 0.0015
# Checkpoints run on a thread of their own this often; the writer's automatic one, after
# this many WAL pages (~40 MiB), is only a backstop should that thread fall behind.
_CHECKPOINT_SECONDS = 0.2
_AUTOCHECKPOINT_PAGES = 10_000

T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]
# Failures of the storage itself, not of one operation: a write after them fails too.
_STORAGE_FAULTS = frozenset({"spool_full", "spool_unwritable", "spool_busy"})
# An operation for the writer thread, and the loop and future its result goes to.
_Job = tuple[Callable[[sqlite3.Connection], Any], tuple[asyncio.AbstractEventLoop, Any]]

_SCHEMA = """
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
    request_key INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_request_key ON events (timestamp, request_key);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_outcome TEXT,
    last_error TEXT,
    last_seconds REAL,
    updated_at REAL NOT NULL,
    body_key INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_unstarted_body ON deliveries (body_key)
    WHERE attempts = 0;
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
# Only an event none of whose deliveries has started can take in an identical body, so
# the body key is indexed on deliveries not yet attempted: the claim's mark takes each out
# as it counts the attempt, the index holds the backlog rather than every event kept, and
# an event without handlers never enters it.
# A request coalesced into a pending event leaves no event of its own: `seen_requests`
# remembers it (and the event it joined) for replay protection, pruned like the events.
# No foreign key: the event may be purged while the request could still be replayed.

# Schema 1 (frameiod before the 64-bit keys) becomes 2 in place, on first open; schema 2
# becomes 3 as `_SCHEMA` creates the seen_requests table it lacks.
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


def _spool_closed() -> SpoolUnavailable:
    """What every call on a closed spool raises (a new one each time: it gets a traceback)."""
    return SpoolUnavailable("spool_closed", "the spool is closed")


def _unavailable(exc: sqlite3.Error) -> SpoolUnavailable:
    code = getattr(exc, "sqlite_errorname", "")
    if code == "SQLITE_FULL":
        return SpoolUnavailable("spool_full", "the spool's disk is full")
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR")):
        return SpoolUnavailable("spool_unwritable", f"the spool cannot be written: {exc}")
    if code.startswith("SQLITE_BUSY"):
        return SpoolUnavailable("spool_busy", f"the spool is locked: {exc}")
    return SpoolUnavailable("spool_error", f"the spool failed: {exc}")


class _Writer(threading.Thread):
    """Owns the connection; runs submitted operations in batches, one commit per batch."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="frameiod-spool", daemon=True)
        self.conn = conn
        # Lists of jobs, each handed over at once (one wake-up of this thread), then None.
        self.jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self.batches = 0
        self.fault: SpoolUnavailable | None = None
        """Why the last batch could not be written, if the storage refused it (a full
        disk, a read-only file, a lock held elsewhere); None once a batch commits."""

    def submit(self, jobs: list[_Job]) -> None:
        """Queue ``jobs`` for the next batch."""
        self.jobs.put(jobs)

    def stop(self) -> None:
        """Finish every job queued so far, then close the connection and end the thread."""
        self.jobs.put(None)

    def run(self) -> None:
        while (batch := self.jobs.get()) is not None:
            while len(batch) < _BATCH_LIMIT:
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.jobs.put(None)  # finish this batch, then stop
                    break
                batch.extend(more)
            # A hand-over may hold more than the limit by itself: one transaction per slice.
            for start in range(0, len(batch), _BATCH_LIMIT):
                self._run_safely(batch[start : start + _BATCH_LIMIT])
        self.conn.close()

    def _run_safely(self, batch: list[_Job]) -> None:
        try:
            self._run_batch(batch)
        except Exception as exc:  # the connection itself failed: fail the batch, go on
            if self.conn.in_transaction:
                self.conn.rollback()
            self._settle(batch, [(False, SpoolUnavailable("spool_error", str(exc)))] * len(batch))

    def _run_batch(self, batch: list[_Job]) -> None:
        # Fast path: the whole batch in one transaction. Only if something fails is it
        # rolled back and run again with a savepoint per operation, so that one failing
        # operation fails alone. (Operations only touch the database: a rerun is safe.)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            results = [_run_unless_abandoned(job, self.conn) for job in batch]
            self.conn.commit()
        except Exception:
            if self.conn.in_transaction:
                self.conn.rollback()
            self._run_batch_carefully(batch)
            return
        self.batches += 1
        self.fault = None
        self._settle(batch, results)

    def _run_batch_carefully(self, batch: list[_Job]) -> None:
        results: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        # Operations that succeeded inside the open transaction: they stand or fall with it.
        uncommitted: list[int] = []

        def fail_uncommitted(error: Exception) -> None:
            for index in uncommitted:
                results[index] = (False, error)
            uncommitted.clear()

        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.fault = _unavailable(exc)
            self._settle(batch, [(False, self.fault)] * len(batch))
            return
        for index, job in enumerate(batch):
            if not self.conn.in_transaction:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    results[index] = (False, _unavailable(exc))
                    continue
            self.conn.execute("SAVEPOINT op")
            try:
                results[index] = _run_unless_abandoned(job, self.conn)
                self.conn.execute("RELEASE op")
                uncommitted.append(index)
            except Exception as exc:
                error = _unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
                results[index] = (False, error)
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK TO op")
                    self.conn.execute("RELEASE op")
                else:
                    # SQLite rolled the whole transaction back itself (it does on a full
                    # disk): the operations before this one are gone too.
                    fail_uncommitted(error)
        if self.conn.in_transaction:
            try:
                self.conn.commit()
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.rollback()
                fail_uncommitted(_unavailable(exc))
        self.batches += 1
        self.fault = _storage_fault(results)
        self._settle(batch, results)

    @staticmethod
    def _settle(batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
        # One wake-up of each event loop per batch, not one per operation.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
        for (_, (loop, future)), (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, settled in by_loop.items():
            # A loop closed meanwhile has no one left to tell; the writes stand all the same.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, settled)


def _run_unless_abandoned(job: _Job, conn: sqlite3.Connection) -> tuple[bool, Any]:
    # A request answered 503 at its deadline while this batch waited (for a lock held
    # elsewhere) cancelled its future: what it asked for is not written at all.
    operation, (_, future) = job
    if future.cancelled():
        return False, None
    return True, operation(conn)


def _storage_fault(results: list[tuple[bool, Any]]) -> SpoolUnavailable | None:
    for ok, value in results:
        if not ok and isinstance(value, SpoolUnavailable) and value.reason in _STORAGE_FAULTS:
            return value
    return None


class _Checkpointer(threading.Thread):
    """Copies the WAL back into the database file from a connection of its own.

    Left to itself, SQLite checkpoints inside the commit that crosses 1000 WAL pages, with
    its fsyncs: every few seconds under load one batch of 202s waited for it. A PASSIVE
    checkpoint here runs beside the writer's commits instead of inside one.
    """

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        super().__init__(name="frameiod-spool-checkpoint", daemon=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.stopping = threading.Event()

    def run(self) -> None:
        # A full disk fails every round until space returns: logged once, then once a minute.
        failing = LastingFault(log, "spool checkpoint failed")
        while not self.stopping.wait(_CHECKPOINT_SECONDS):
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # busy, or a disk error: the next round tries again
                failing.failed(detail=str(exc))
            else:
                failing.cleared("spool checkpoints work again")
        self.conn.close()


def _resolve(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.done():  # the awaiting request went away; the work is done regardless
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """Open the spool file, create the schema, and prove the settings took."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise SpoolError(
            f"{path.parent}: cannot create the spool's directory as user {_user()}: "
            f"{exc.strerror}; create it and give {_user()} write access to it"
        ) from None
    except OSError as exc:
        raise SpoolError(f"{path}: cannot open the spool: {exc}") from None
    if problem := _access_problem(path):
        raise SpoolError(problem)
    try:
        created = _create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise SpoolError(f"{path}: cannot open the spool: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        # Identified before anything is written: another application's file is left as is.
        version = _identify(conn, path)
        if not created:
            _tighten(path)
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
        conn.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise SpoolError(f"{path}: the spool is corrupt ({check}); move it aside to start")
        if version == 1:
            _upgrade_from_1(conn)
        # One transaction: a crash half-way must not leave a file that looks like no spool.
        # It also creates what an older schema lacks (IF NOT EXISTS leaves the rest alone).
        conn.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"
            f" PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
        )
        if 0 < version < SCHEMA_VERSION:
            log.info(
                "spool upgraded", spool=str(path), schema_from=version, schema_to=SCHEMA_VERSION
            )
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _is_permission_error(exc):
            raise SpoolError(_not_permitted(path, str(exc))) from None
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


def _user(uid: int | None = None) -> str:
    """User ``uid`` (default: the one this process runs as), by name when it has one."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner(path: Path) -> str:
    info = path.stat()
    return f"owner {_user(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o}"


# Said with every permission problem: the usual advice for a broken SQLite file (move it
# aside) would abandon the pending events here.
_KEEP_IT = "Nothing is damaged; do not move the spool aside, it holds the pending events."


def _companions(path: Path) -> list[Path]:
    """The spool file and the files SQLite keeps beside it in WAL mode."""
    return [path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")]


def _access_problem(path: Path) -> str | None:
    """Why this user cannot read and write the spool, its WAL files and its directory, or
    None. The answer names what to fix: the spool itself is fine and must not be moved."""
    user = _user()
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        return (
            f"{path}: the spool is on a read-only filesystem; frameiod must write it and "
            f"create {path.name}-wal and {path.name}-shm beside it. Remount it read-write "
            f"or point [spool] path at a writable place. {_KEEP_IT}"
        )
    for file in _companions(path):
        if file.exists() and not os.access(file, os.R_OK | os.W_OK, effective_ids=True):
            return (
                f"{file}: the spool is read-only for user {user}, who runs frameiod "
                f"({_owner(file)}). Give {user} read and write access (e.g. chown {user} "
                f"{file}, or chmod u+rw as its owner) and start again. {_KEEP_IT}"
            )
    must_create = not all(file.exists() for file in _companions(path))
    if must_create and not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        return (
            f"{path.parent}: the spool's directory is not writable by user {user}, who runs "
            f"frameiod ({_owner(path.parent)}); SQLite creates {path.name}-wal and "
            f"{path.name}-shm there. Give {user} write access to it (e.g. chown {user} "
            f"{path.parent}) and start again. {_KEEP_IT}"
        )
    return None


def _is_permission_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorname", "")
    return code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))


def _not_permitted(path: Path, detail: str) -> str:
    # What the checks above could not see (an ACL, a security module, a file swapped since).
    user = _user()
    return (
        f"{path}: the spool cannot be written by user {user}, who runs frameiod ({detail}). "
        f"Check that {user} may read and write it, {path.name}-wal and {path.name}-shm, and "
        f"write to its directory. {_KEEP_IT}"
    )


def _create_private(path: Path) -> bool:
    """Create the spool file readable by its owner only, whatever the umask (SQLite gives
    its -wal and -shm the same mode); True if it was created now."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


def _tighten(path: Path) -> None:
    """Make an existing spool's files owner-only: they hold raw bodies and signatures."""
    for file in _companions(path):
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                try:
                    file.chmod(mode & 0o700)
                except OSError as exc:
                    log.warning(
                        "spool file is readable by others and cannot be made owner-only",
                        file=str(file),
                        mode=f"{mode:04o}",
                        error=exc.strerror,
                    )
                    continue
                log.info(
                    "spool file made readable by its owner only",
                    file=str(file),
                    mode_was=f"{mode:04o}",
                    mode=f"{mode & 0o700:04o}",
                )


def _connect_reader(path: Path) -> sqlite3.Connection:
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
        # Schema 2: `_connect` takes it on from there, like any other spool of schema 2.
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    except sqlite3.Error:
        conn.rollback()
        raise


class Spool:
    """The durable spool. Open with `open`; every write runs on the writer thread.

    Opened for an operator, it has no writer: its connection does the operator's actions
    (`stats` to `purge_dead`) and nothing else.
    """

    def __init__(
        self, path: Path, writer: _Writer | None, reader: sqlite3.Connection, recovered: int = 0
    ) -> None:
        self.path = path
        self.recovered = recovered
        """How many deliveries a crash had left ``running`` (now ``pending`` again)."""
        self._writer = writer
        self._reader = reader
        # One thread: the reader connection is used by one thread at a time.
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="frameiod-spool-read")
        self._claimed: set[DeliveryId] = set()
        # Each claimed delivery's pending "running" mark (one write per claim), until
        # `confirm` has seen it.
        self._marks: dict[DeliveryId, asyncio.Future[frozenset[DeliveryId]]] = {}
        self._checkpointer: _Checkpointer | None = None
        self._listeners = Listeners()
        self._closed = False
        # Operations waiting for the daemon's event loop to run out of work (`_handover`):
        # only that loop's thread touches the list.
        self._held: list[_Job] = []
        self._handover: HandOver | None = None
        self.handover = "immediate"
        """Which hand-over is in force, for the start-up log: "loop idle" or "immediate"."""

    @classmethod
    async def open(
        cls,
        path: Path,
        synchronous: Synchronous = "FULL",
        *,
        handover: HandOver | None = None,
        role: Role = "daemon",
    ) -> Spool:
        """Open (or create) the spool at ``path``; raise `SpoolError` if it cannot be used.

        Deliveries a crash left ``running`` go back to ``pending``. ``handover`` lets the
        event loop say when to hand operations to the writer (see the module docstring).
        With ``role="operator"`` none of that: an existing spool is opened as it is, beside
        a daemon that may be running, for the operator's actions only (`QueueError` if it
        cannot be).
        """
        if role == "operator":
            return cls(path, None, await asyncio.to_thread(sqlite_queue.connect_operator, path))
        conn = await asyncio.to_thread(_connect, path, synchronous)
        # Before the writer thread exists, the connection is still this thread's alone.
        recovered = await asyncio.to_thread(_recover_committed, conn)
        try:
            reader = await asyncio.to_thread(_connect_reader, path)
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"{path}: cannot open the spool for reading: {exc}") from None
        writer = _Writer(conn)
        writer.start()
        checkpointer = _Checkpointer(path, synchronous)
        checkpointer.start()
        spool = cls(path, writer, reader, recovered)
        spool._checkpointer = checkpointer
        if handover is not None:
            spool._handover = handover
            # Asked once with nothing to run: whether this loop can call back at all.
            if handover(asyncio.get_running_loop(), _nothing, _HOLD_AT_MOST):
                spool.handover = "loop idle"
        return spool

    @property
    def batches(self) -> int:
        """Transactions committed so far (each batch of operations is one)."""
        return self._writer.batches if self._writer is not None else 0

    def run(self, operation: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``operation(connection)`` on the writer thread, inside the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer = self._writer
        if self._closed:
            future.set_exception(_spool_closed())
        elif writer is None:
            future.set_exception(SpoolError(f"{self.path}: opened for the operator's actions"))
        else:
            self._hold((operation, (loop, future)), loop, writer)
        return future

    def _hold(self, job: _Job, loop: asyncio.AbstractEventLoop, writer: _Writer) -> None:
        # Only a loop the hand-over serves can say when it is idle; on any other, no
        # holding. Held jobs are all one loop's: each carries its loop, the first says whose.
        held_for = self._held[0][1][0] if self._held else None
        if held_for is loop:
            self._held.append(job)
        elif (
            held_for is None
            and self._handover is not None
            and self._handover(loop, self._hand_over, _HOLD_AT_MOST)
        ):
            self._held = [job]
        else:
            writer.submit([job])

    def _hand_over(self) -> None:
        if self._held and self._writer is not None:  # `close` may have handed them over
            jobs, self._held = self._held, []
            self._writer.submit(jobs)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed (claims' marks included)."""
        await self.run(lambda conn: None)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise _spool_closed()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reads, query, self._reader)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    def describe(self) -> str:
        """The spool file."""
        return str(self.path)

    async def check(self) -> None:
        """Raise `SpoolUnavailable` if the spool is closed, its writer thread has stopped,
        or its last write was refused (a full disk, a read-only file, a lock held) and a
        small write still is.

        While writes succeed the file is not touched; after a refused one, each check tries
        a write of its own, so the fault is seen to clear even when nothing else writes.
        """
        if self._closed:
            raise _spool_closed()
        if self._writer is None or not self._writer.is_alive():
            raise SpoolUnavailable("spool_error", "the spool's writer thread has stopped")
        if self._writer.fault is not None:
            await self.run(_probe)

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever new deliveries were committed."""
        self._listeners.add(listener)

    def expect_handlers(self, timeouts: dict[str, float]) -> None:
        """Nothing to do: one process owns this file, and `open` recovers what a crash left
        running."""

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """Commit ``incoming`` with one pending delivery per handler in ``handlers``, unless it
        is a duplicate; raise `SpoolUnavailable` if it cannot be written."""
        accepted = await self.run(lambda conn: _accept(conn, incoming, handlers))
        if accepted.deliveries:
            self._listeners.notify()
        return accepted

    async def claim(
        self, limit: int, caps: dict[str, int], now: float | None = None
    ) -> list[Claimed]:
        """Mark up to ``limit`` due deliveries ``running``, oldest first, and return them.

        ``caps`` maps each handler that may run to how many more calls it may start now;
        handlers not in it (not loaded, or at their concurrency limit) are skipped. The mark
        is queued, not awaited (see the module docstring): `confirm` waits for it, in each
        delivery's own task, before its handler is called.
        """
        if limit <= 0 or not caps:
            return []
        moment = time.time() if now is None else now
        taken = frozenset(self._claimed)
        claimed = await self._read(lambda conn: _due(conn, limit, dict(caps), moment, taken))
        if claimed:
            # Queued before the calls start: an identical body accepted after this point is
            # queued behind the mark and no longer coalesces into a started delivery; one
            # queued before it arrived before the call started, which then sees it.
            ids = [item.delivery_id for item in claimed]
            self._claimed.update(ids)
            mark = self.run(lambda conn: _mark_running(conn, moment, ids))
            mark.add_done_callback(_retrieve)  # a stop may release them all unconfirmed
            self._marks.update(dict.fromkeys(ids, mark))
        return claimed

    async def confirm(self, item: Claimed) -> bool:
        """Wait until the claim's mark is committed; False if the delivery was no longer
        pending when it was (replayed or purged meanwhile)."""
        mark = self._marks.pop(item.delivery_id, None)
        if mark is None:
            return False  # not claimed by this process, or already confirmed
        try:
            # Shared by the whole claim: one delivery's cancelled task must not cancel it.
            marked = await asyncio.shield(mark)
        except BaseException:
            # Not on record, so not running: it may be claimed again once writes succeed.
            self._claimed.discard(item.delivery_id)
            raise
        if item.delivery_id in marked:
            return True
        self._claimed.discard(item.delivery_id)
        return False

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
        """Record how a call ended: ``done`` when it succeeded, ``dead`` when ``dead``, else
        ``pending`` again at ``next_attempt_at``."""
        state = "done" if outcome == "ok" else ("dead" if dead else "pending")
        row = (
            state,
            outcome,
            error[:_ERROR_LIMIT] if error else None,
            seconds,
            next_attempt_at,
            time.time(),
            delivery_id,
        )
        try:
            await self.run(
                lambda conn: conn.execute(
                    "UPDATE deliveries SET state = ?, last_outcome = ?, last_error = ?,"
                    " last_seconds = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                    " updated_at = ? WHERE id = ?",
                    row,
                )
            )
        finally:
            # Written, or failed (then it stays as the claim's mark left it): either way
            # the database, not this set, now says whether it may be claimed.
            self._claimed.discard(delivery_id)
        if state == "pending":
            self._listeners.notify()

    async def release(self, delivery_ids: Iterable[DeliveryId]) -> None:
        """Put deliveries that were running back to ``pending`` (a call cut short by stop)."""
        ids = [(time.time(), delivery_id) for delivery_id in delivery_ids]
        for _, delivery_id in ids:
            self._marks.pop(delivery_id, None)
        try:
            await self.run(
                lambda conn: conn.executemany(
                    "UPDATE deliveries SET state = 'pending', updated_at = ? WHERE id = ?"
                    " AND state = 'running'",
                    ids,
                )
            )
        finally:
            self._claimed.difference_update(delivery_id for _, delivery_id in ids)

    async def next_due(self, handlers: Iterable[str]) -> float | None:
        """When the earliest pending delivery of ``handlers`` is due, or None."""
        names = list(handlers)
        if not names:
            return None
        taken = list(self._claimed)  # claimed, their mark perhaps not written yet
        sql = (
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
            f" AND handler IN ({','.join('?' * len(names))})"
            f" AND id NOT IN ({','.join('?' * len(taken))})"
        )
        row = await self._read(lambda conn: conn.execute(sql, [*names, *taken]).fetchone())
        return row[0]

    async def deliveries_of(self, event_id: str) -> list[EventDelivery]:
        """Every delivery of one event, in the order they were accepted."""
        rows = await self.run(
            lambda conn: _rows(
                conn.execute(
                    "SELECT id, handler, state, attempts, next_attempt_at, last_outcome,"
                    " last_error, last_seconds, updated_at, event_id FROM deliveries"
                    " WHERE event_id = ? ORDER BY id",
                    (event_id,),
                )
            )
        )
        return cast(list[EventDelivery], rows)

    async def gauges(self, now: float | None = None) -> tuple[dict[str, int], float]:
        """Deliveries per state, and the age in seconds of the oldest due pending one.

        Counted on a connection of their own, never the writer's: counting reads every
        delivery kept (~60 ms per million), and on the writer every 202 would wait for it.
        """
        moment = time.time() if now is None else now
        if self._closed:
            raise _spool_closed()
        try:
            return await asyncio.to_thread(_count_states, self.path, moment)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    async def purge_done(self, older_than: float, replay_window: float = 0.0) -> int:
        """Delete events whose deliveries are all done (or that had none) and that were
        received more than ``older_than`` seconds ago; dead letters stay.

        The events, and ``seen_requests`` for requests coalesced into one, are the record
        of the requests seen: one signed less than ``replay_window`` seconds ago stays until
        it is older, or a replay would be new.
        """
        now = time.time()
        return await self.run(lambda conn: _purge(conn, now - older_than, now - replay_window))

    async def stats(self, now: float | None = None) -> QueueStats:
        """Deliveries per state and per handler, and the age of the oldest due pending one."""
        moment = time.time() if now is None else now
        return await self._operate(lambda conn: sqlite_queue.stats(conn, moment))

    async def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[ListedDelivery]:
        """Deliveries, newest first, optionally of one state and one handler."""
        return await self._operate(
            lambda conn: sqlite_queue.list_deliveries(conn, state, handler, limit)
        )

    async def show(self, event_id: str) -> EventDetail | None:
        """One event, its payload and its deliveries; None if there is no such event."""
        return await self._operate(lambda conn: sqlite_queue.show(conn, event_id))

    async def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """Make dead deliveries (of event ids, or delivery ids: numbers) pending again."""
        wanted = list(ids)
        return await self._operate(
            lambda conn: sqlite_queue.replay(conn, wanted, all_dead), write=True
        )

    async def purge_dead(self, older_than: float) -> int:
        """Delete dead deliveries last touched more than ``older_than`` seconds ago."""
        return await self._operate(
            lambda conn: sqlite_queue.purge_dead(conn, older_than), write=True
        )

    async def _operate(self, action: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """Run one of the operator's actions: a daemon's writes in its writer's next batch,
        reads (and an operator's writes, each its own transaction) on the reading
        connection; every failure a `QueueError`."""
        try:
            if self._closed:
                raise _spool_closed()
            if write and self._writer is not None:
                return await self.run(action)
            loop = asyncio.get_running_loop()
            if write:
                return await loop.run_in_executor(
                    self._reads, _in_transaction, action, self._reader
                )
            return await loop.run_in_executor(self._reads, action, self._reader)
        except sqlite3.Error as exc:  # not a spool, or locked beyond the busy timeout
            raise QueueError(f"{self.path}: cannot use the spool: {exc}") from None
        except SpoolUnavailable as exc:
            raise QueueError(f"{self.path}: cannot use the spool: {exc.detail}") from None

    async def close(self) -> None:
        """Finish queued operations and close the file."""
        self._closed = True
        if self._writer is None:
            await asyncio.to_thread(self._reads.shutdown)
            self._reader.close()
            return
        self._hand_over()
        self._writer.stop()
        await asyncio.to_thread(self._writer.join)
        if self._checkpointer is not None:
            self._checkpointer.stopping.set()
            await asyncio.to_thread(self._checkpointer.join)
        await asyncio.to_thread(self._reads.shutdown)
        self._reader.close()


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _in_transaction(action: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``action`` in a write transaction of its own on ``conn``."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return action(conn)


def _recover_committed(conn: sqlite3.Connection) -> int:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return conn.execute(
            "UPDATE deliveries SET state = 'pending', updated_at = ? WHERE state = 'running'",
            (time.time(),),
        ).rowcount


def _accept(conn: sqlite3.Connection, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
    digest = body_hash(incoming.body)
    keys = (request_key(incoming.signature), body_key(digest))
    # One query for every kind of duplicate (each statement costs a trip through the GIL):
    # the same signed request again (Frame.io's retry, or a replay), as an event or as a
    # request coalesced earlier, or an identical body none of whose deliveries has started
    # (that run will see the latest state). The second column says it was the last kind.
    row = conn.execute(
        "SELECT id, 0 FROM events WHERE timestamp = :ts AND request_key = :key"
        " AND signature = :sig AND source = :source"
        " UNION ALL"
        " SELECT event_id, 0 FROM seen_requests WHERE timestamp = :ts AND request_key = :key"
        " AND signature = :sig AND source = :source"
        " UNION ALL"
        " SELECT * FROM (SELECT e.id, 1 FROM deliveries u JOIN events e ON e.id = u.event_id"
        " WHERE u.body_key = :body_key AND u.attempts = 0 AND e.body_hash = :digest"
        " AND e.source = :source AND e.secret_id = :secret AND NOT EXISTS (SELECT 1 FROM"
        " deliveries d WHERE d.event_id = e.id AND (d.state != 'pending' OR d.attempts > 0))"
        " ORDER BY e.received_at DESC LIMIT 1)"
        " LIMIT 1",
        {
            "ts": incoming.timestamp,
            "key": keys[0],
            "sig": incoming.signature,
            "source": incoming.source,
            "body_key": keys[1],
            "digest": digest,
            "secret": incoming.secret_id,
        },
    ).fetchone()
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
        " secret_id, received_at, request_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        ),
    )
    if handlers:
        conn.executemany(
            "INSERT INTO deliveries (event_id, handler, state, next_attempt_at, updated_at,"
            " body_key) VALUES (?, ?, 'pending', ?, ?, ?)",
            [
                (incoming.id, handler, incoming.received_at, incoming.received_at, keys[1])
                for handler in handlers
            ],
        )
    return Accepted(incoming.id, duplicate=False, deliveries=len(handlers))


def _purge(conn: sqlite3.Connection, received_before: float, signed_before: float) -> int:
    """Delete finished events received before ``received_before`` and the record of
    requests signed before ``signed_before``; return how many events went."""
    conn.execute("DELETE FROM seen_requests WHERE timestamp < ?", (signed_before,))
    return conn.execute(
        "DELETE FROM events WHERE received_at < ? AND timestamp < ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state != 'done')",
        (received_before, signed_before),
    ).rowcount


def _due(
    conn: sqlite3.Connection,
    limit: int,
    caps: dict[str, int],
    now: float,
    taken: frozenset[DeliveryId],
) -> list[Claimed]:
    # One indexed query per handler, each taking at most what that handler may start: a
    # backlog of one capped handler can never hide the due deliveries of the others. Rows
    # already claimed but not yet marked are skipped, so each query reads that many more.
    rows = []
    for handler, room in caps.items():
        if room <= 0:  # SQLite would read a negative LIMIT as "no limit"
            continue
        found = conn.execute(
            "SELECT d.next_attempt_at, d.id, d.event_id, d.handler, d.attempts, e.source,"
            " e.body, e.timestamp, e.received_at FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.handler = ?"
            " AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (handler, now, min(room, limit) + len(taken)),
        ).fetchall()
        rows += [row for row in found if row[1] not in taken][: min(room, limit)]
    rows.sort()  # oldest first across handlers
    return [Claimed(row[1], row[2], row[3], row[4] + 1, *row[5:]) for row in rows[:limit]]


def _mark_running(
    conn: sqlite3.Connection, now: float, ids: list[DeliveryId]
) -> frozenset[DeliveryId]:
    """Mark the claimed deliveries that are still pending ``running``; return which."""
    cursor = conn.execute(
        "UPDATE deliveries SET state = 'running', attempts = attempts + 1, updated_at = ?"
        f" WHERE state = 'pending' AND id IN ({','.join('?' * len(ids))}) RETURNING id",
        (now, *ids),
    )
    return frozenset(row[0] for row in cursor)


def _nothing() -> None:
    """A hand-over's callback with nothing to hand over."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Marks the failure as seen; whoever confirms still gets it.
    if not future.cancelled():
        future.exception()


def _probe(conn: sqlite3.Connection) -> None:
    # Rewrites the header's schema version with its own value: a page written and committed
    # like any delivery's, and nothing changed.
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _count_states(path: Path, now: float) -> tuple[dict[str, int], float]:
    conn = _connect_reader(path)
    try:
        return _gauges(conn, now)
    finally:
        conn.close()


def _gauges(conn: sqlite3.Connection, now: float) -> tuple[dict[str, int], float]:
    counts = dict.fromkeys(STATES, 0)
    counts.update(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))
    oldest = conn.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        " AND next_attempt_at <= ?",
        (now,),
    ).fetchone()[0]
    return counts, (now - oldest) if oldest is not None else 0.0
