"""The writer thread: it owns the spool's connection and runs the operations handed to it in
batches, one transaction and one commit per batch (group commit).

If anything in a batch fails, the batch is run again with a savepoint per operation, so a
failing operation fails alone; operations must therefore touch nothing but the database. (A
full disk is the exception: SQLite then rolls back the whole transaction, and every
operation of that batch is reported failed, none falsely reported committed.) One
operation may do several callers' work (the outcomes of a loop turn): it fails as one, and
each of them gets the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from frameiod.store.base import SpoolUnavailable

__all__ = ["Job", "Receivers", "Writer", "closed_error", "unavailable"]

_BATCH_LIMIT = 256
# Failures of the storage itself, not of one operation: a write after them fails too.
_STORAGE_FAULTS = frozenset({"spool_full", "spool_unwritable", "spool_busy"})

Receivers = list[asyncio.Future[Any]]
"""Where a job's result goes: its caller's future, or each of several callers' (whose
operations one job does together)."""
Job = tuple[Callable[[sqlite3.Connection], Any], tuple[asyncio.AbstractEventLoop, Receivers]]
"""An operation for the writer thread, and the loop and the futures its result goes to."""


def closed_error() -> SpoolUnavailable:
    """What every call on a closed spool raises (a new one each time: it gets a traceback)."""
    return SpoolUnavailable("spool_closed", "the spool is closed")


def unavailable(exc: sqlite3.Error) -> SpoolUnavailable:
    """What a failure of SQLite means for the spool's callers."""
    code = getattr(exc, "sqlite_errorname", "")
    if code == "SQLITE_FULL":
        return SpoolUnavailable("spool_full", "the spool's disk is full")
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR")):
        return SpoolUnavailable("spool_unwritable", f"the spool cannot be written: {exc}")
    if code.startswith("SQLITE_BUSY"):
        return SpoolUnavailable("spool_busy", f"the spool is locked: {exc}")
    return SpoolUnavailable("spool_error", f"the spool failed: {exc}")


class Writer(threading.Thread):
    """Owns the connection; runs submitted operations in batches, one commit per batch."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="frameiod-spool", daemon=True)
        self.conn = conn
        # Lists of jobs, each handed over at once (one wake-up of this thread), then None.
        self.jobs: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self.batches = 0
        self.fault: SpoolUnavailable | None = None
        """Why the last batch could not be written, if the storage refused it (a full
        disk, a read-only file, a lock held elsewhere); None once a batch commits a
        change."""

    def submit(self, jobs: list[Job]) -> None:
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

    def _run_safely(self, batch: list[Job]) -> None:
        try:
            self._run_batch(batch)
        except Exception as exc:  # the connection itself failed: fail the batch, go on
            if self.conn.in_transaction:
                self.conn.rollback()
            self._settle(batch, [(False, SpoolUnavailable("spool_error", str(exc)))] * len(batch))

    def _run_batch(self, batch: list[Job]) -> None:
        # Fast path: the whole batch in one transaction. Only if something fails is it
        # rolled back and run again with a savepoint per operation, so that one failing
        # operation fails alone. (Operations only touch the database: a rerun is safe.)
        changes = self.conn.total_changes
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
        if self.conn.total_changes != changes:  # a batch of reads says nothing of writes
            self.fault = None
        self._settle(batch, results)

    def _run_batch_carefully(self, batch: list[Job]) -> None:
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
            self.fault = unavailable(exc)
            self._settle(batch, [(False, self.fault)] * len(batch))
            return
        for index, job in enumerate(batch):
            if not self.conn.in_transaction:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    results[index] = (False, unavailable(exc))
                    continue
            self.conn.execute("SAVEPOINT op")
            try:
                results[index] = _run_unless_abandoned(job, self.conn)
                self.conn.execute("RELEASE op")
                uncommitted.append(index)
            except Exception as exc:
                error = unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
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
                fail_uncommitted(unavailable(exc))
        self.batches += 1
        self.fault = _storage_fault(results)
        self._settle(batch, results)

    @staticmethod
    def _settle(batch: list[Job], results: list[tuple[bool, Any]]) -> None:
        # One wake-up of each event loop per batch, not one per operation.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Receivers, bool, Any]]] = {}
        for (_, (loop, to)), (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((to, ok, value))
        for loop, settled in by_loop.items():
            # A loop closed meanwhile has no one left to tell; the writes stand all the same.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, settled)


def _run_unless_abandoned(job: Job, conn: sqlite3.Connection) -> tuple[bool, Any]:
    # A request answered 503 at its deadline while this batch waited (for a lock held
    # elsewhere) cancelled its future: what it asked for is not written at all. (A job
    # for several callers runs while any of them waits.)
    operation, (_, to) = job
    for future in to:
        if not future.cancelled():
            return True, operation(conn)
    return False, None


def _storage_fault(results: list[tuple[bool, Any]]) -> SpoolUnavailable | None:
    for ok, value in results:
        if not ok and isinstance(value, SpoolUnavailable) and value.reason in _STORAGE_FAULTS:
            return value
    return None


def _resolve(settled: list[tuple[Receivers, bool, Any]]) -> None:
    for to, ok, value in settled:
        _set(to[0], ok, value)
        for future in to[1:]:
            _set(future, ok, value if ok else _own_copy(value))


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one of several callers: raised in their tasks, one exception
    would gather all their tracebacks."""
    if isinstance(error, SpoolUnavailable):
        return SpoolUnavailable(error.reason, error.detail)
    try:
        return copy.copy(error)
    except Exception:  # an exception that cannot be rebuilt from its arguments
        return error


def _set(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the awaiting request went away; the work is done regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
