"""`Spool`: the SQLite store's `frameiod.store.base.SpoolBackend`, on the writer thread
(`frameiod.store.sqlite.writer`) and a read-only connection."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from frameiod.store.base import (
    HOLD_AT_MOST,
    Accepted,
    Claimed,
    DeliveryFilter,
    DeliveryId,
    DeliveryPage,
    EventDelivery,
    EventDetail,
    HandOver,
    Incoming,
    ItemResult,
    ListedDelivery,
    Listeners,
    QueueError,
    QueueStats,
    Role,
    SpoolError,
    SpoolUnavailable,
    Taker,
    working_handover,
)
from frameiod.store.sqlite import actions, operations
from frameiod.store.sqlite.checkpointer import Checkpointer
from frameiod.store.sqlite.lock import SpoolLock
from frameiod.store.sqlite.operations import OutcomeRow
from frameiod.store.sqlite.schema import Synchronous, connect_reader, connect_writer
from frameiod.store.sqlite.unstarted import Unstarted
from frameiod.store.sqlite.writer import Job, Receivers, Writer, closed_error, unavailable

__all__ = ["Spool"]

T = TypeVar("T")

_ERROR_LIMIT = 2000  # characters of the last error kept per delivery


@dataclass(frozen=True, slots=True)
class _Outcomes:
    """The outcomes a held job writes, the loop it belongs to, and their callers' futures."""

    loop: asyncio.AbstractEventLoop
    rows: list[OutcomeRow]
    futures: list[asyncio.Future[None]]


class Spool:
    """The durable spool. Open with `open`; every write runs on the writer thread.

    Opened for an operator, it has no writer: its connection does the operator's actions
    (`stats` to `purge_dead`) and nothing else.
    """

    def __init__(
        self,
        path: Path,
        writer: Writer | None,
        reader: sqlite3.Connection,
        recovered: int = 0,
        unstarted: Unstarted | None = None,
        *,
        lock: SpoolLock | None = None,
    ) -> None:
        self.path = path
        self._lock = lock
        self.recovered = recovered
        """How many deliveries a crash had left ``running`` (now ``pending`` again)."""
        self._writer = writer
        # Which waiting event an identical body may join: the writer thread's alone.
        self._unstarted = Unstarted() if unstarted is None else unstarted
        self._reader = reader
        # One thread: the reader connection is used by one thread at a time.
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="frameiod-spool-read")
        self._checkpointer: Checkpointer | None = None
        self._listeners = Listeners()
        self._taker: Taker | None = None
        self._closed = False
        # Operations waiting for the daemon's event loop to run out of work (`_handover`):
        # only that loop's thread touches the list.
        self._held: list[Job] = []
        # The outcomes (`finish`) of the job among them that writes them all, and their
        # futures: later ones join it until it is handed over, so a loop turn's outcomes
        # are one statement.
        self._outcomes: _Outcomes | None = None
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

        Deliveries a crash left ``running`` go back to ``pending``, once this process
        holds the spool's lock: another daemon holding it is refused (`SpoolLock`).
        ``handover`` lets the event loop say when to hand operations to the writer (see
        the module docstring).
        With ``role="operator"`` none of that: an existing spool is opened as it is, beside
        a daemon that may be running, for the operator's actions only (`QueueError` if it
        cannot be).
        """
        if role == "operator":
            return cls(path, None, await asyncio.to_thread(actions.connect_operator, path))
        lock = await asyncio.to_thread(SpoolLock.take, path)
        try:
            conn = await asyncio.to_thread(connect_writer, path, synchronous)
            # Before the writer thread exists, the connection is still this thread's alone.
            recovered = await asyncio.to_thread(operations.recover_running, conn)
            unstarted = Unstarted()
            await asyncio.to_thread(unstarted.load, conn)
            try:
                reader = await asyncio.to_thread(connect_reader, path)
            except sqlite3.Error as exc:
                conn.close()
                raise SpoolError(f"{path}: cannot open the spool for reading: {exc}") from None
        except BaseException:
            lock.release()
            raise
        writer = Writer(conn)
        writer.start()
        checkpointer = Checkpointer(path, synchronous)
        checkpointer.start()
        spool = cls(path, writer, reader, recovered, unstarted, lock=lock)
        spool._checkpointer = checkpointer
        spool._handover = working_handover(handover)
        if spool._handover is not None:
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
        self._submit(operation, loop, [future])
        return future

    def _submit(
        self,
        operation: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        to: Receivers,
    ) -> bool:
        """Give ``operation`` to the writer, its result to go ``to`` each future there;
        True if the job is held for the loop's idle moment."""
        writer = self._writer
        if self._closed or writer is None:
            for future in to:
                future.set_exception(
                    closed_error()
                    if self._closed
                    else SpoolError(f"{self.path}: opened for the operator's actions")
                )
            return False
        return self._hold((operation, (loop, to)), loop, writer)

    def _hold(self, job: Job, loop: asyncio.AbstractEventLoop, writer: Writer) -> bool:
        # Only a loop the hand-over serves can say when it is idle; on any other, no
        # holding. Held jobs are all one loop's: each carries its loop, the first says whose.
        held_for = self._held[0][1][0] if self._held else None
        if held_for is loop:
            self._held.append(job)
        elif (
            held_for is None
            and self._handover is not None
            and self._handover(loop, self._hand_over, HOLD_AT_MOST)
        ):
            self._held = [job]
        else:
            writer.submit([job])
            return False
        return True

    def _hand_over(self) -> None:
        # From here on the writer thread reads the held outcomes: none may join them.
        self._outcomes = None
        if self._held and self._writer is not None:  # `close` may have handed them over
            jobs, self._held = self._held, []
            self._writer.submit(jobs)

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
            raise closed_error()
        if self._writer is None or not self._writer.is_alive():
            raise SpoolUnavailable("spool_error", "the spool's writer thread has stopped")
        if self._writer.fault is not None:
            await self.run(operations.probe)

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever new deliveries were committed."""
        self._listeners.add(listener)

    def expect_handlers(self, timeouts: dict[str, float]) -> None:
        """Nothing to do: one process owns this file, and `open` recovers what a crash left
        running."""

    def hand_fresh_to(self, taker: Taker) -> None:
        """Write the deliveries ``taker`` reserves already claimed, and hand them to it."""
        self._taker = taker

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """Commit ``incoming`` with one pending delivery per handler in ``handlers``, unless it
        is a duplicate; raise `SpoolUnavailable` if it cannot be written.

        Deliveries the taker (`hand_fresh_to`) reserves are written claimed instead, in the
        same transaction, and handed to it once committed: no second write claims them.
        """
        taker = self._taker
        starting = taker.reserve(handlers) if taker is not None and handlers else []
        unstarted = self._unstarted
        try:
            accepted = await self.run(
                lambda conn: operations.accept(conn, incoming, handlers, unstarted, starting)
            )
        except BaseException as exc:
            if starting:
                if isinstance(exc, asyncio.CancelledError):
                    # Given up at the request's deadline: the write may still have been
                    # committed, with nobody left to run what it claimed. Undo that claim
                    # in the next batch (a no-op if it was never written).
                    self._unclaim(incoming.id)
                taker.take(starting, ())
            raise
        if starting:
            taker.take(starting, accepted.started)
        if accepted.deliveries > len(accepted.started):
            self._listeners.notify()
        return accepted

    def _unclaim(self, event_id: str) -> None:
        written = self.run(lambda conn: operations.unclaim(conn, event_id))

        def done(future: asyncio.Future[int]) -> None:
            if not future.cancelled() and not future.exception() and future.result():
                self._listeners.notify()

        written.add_done_callback(done)

    async def claim(
        self, limit: int, caps: dict[str, int], now: float | None = None
    ) -> list[Claimed]:
        """Mark up to ``limit`` due deliveries ``running``, oldest first, and return them
        once the mark is committed.

        ``caps`` maps each handler that may run to how many more calls it may start now;
        handlers not in it (not loaded, or at their concurrency limit) are skipped. Found
        and marked in one operation of the writer's next batch: no thread of its own is
        woken, and an identical body accepted in a later batch no longer coalesces into a
        started delivery, while one accepted before is seen by the call.
        """
        if limit <= 0 or not caps:
            return []
        moment = time.time() if now is None else now
        room, unstarted = dict(caps), self._unstarted
        return await self.run(lambda conn: operations.claim(conn, limit, room, moment, unstarted))

    async def confirm(self, item: Claimed) -> bool:
        """True: `claim` returns deliveries whose mark is committed."""
        if self._closed:
            raise closed_error()
        return True

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
        # Failed, it stays as the claim's mark left it: running, its attempt counted.
        await self._write_outcome(row)
        if state == "pending":
            self._listeners.notify()

    def _write_outcome(self, row: OutcomeRow) -> asyncio.Future[None]:
        """Have ``row`` written by the held job that writes outcomes, or by a new one.

        A claim's calls end together, so their outcomes come together: one job and one
        statement for them all, not one each. If that job fails, each of them gets the
        failure (SQLite wrote none of them). A row whose caller went away (its future
        cancelled) is written all the same while the others' are.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        held = self._outcomes
        if held is not None and held.loop is loop:
            held.rows.append(row)
            held.futures.append(future)
            return future
        rows, futures = [row], [future]
        if self._submit(lambda conn: operations.finish(conn, rows), loop, futures):
            self._outcomes = _Outcomes(loop, rows, futures)
        return future

    async def release(self, delivery_ids: Iterable[DeliveryId]) -> None:
        """Put deliveries that were running back to ``pending`` (a call cut short by stop)."""
        ids = [(time.time(), delivery_id) for delivery_id in delivery_ids]
        await self.run(lambda conn: operations.release(conn, ids))

    async def next_due(self, handlers: Iterable[str]) -> float | None:
        """When the earliest pending delivery of ``handlers`` is due, or None."""
        names = list(handlers)
        if not names:
            return None
        # On the writer, in its next batch: claims change what is pending there.
        return await self.run(lambda conn: operations.next_due(conn, names))

    async def deliveries_of(self, event_id: str) -> list[EventDelivery]:
        """Every delivery of one event, in the order they were accepted."""
        return await self.run(lambda conn: operations.deliveries_of(conn, event_id))

    async def gauges(self, now: float | None = None) -> tuple[dict[str, int], float]:
        """Deliveries per state, and the age in seconds of the oldest due pending one.

        Counted on a connection of their own, never the writer's: counting reads every
        delivery kept, and on the writer every 202 would wait for it.
        """
        moment = time.time() if now is None else now
        if self._closed:
            raise closed_error()
        try:
            return await asyncio.to_thread(operations.count_states, self.path, moment)
        except sqlite3.Error as exc:
            raise unavailable(exc) from None

    async def purge_done(self, older_than: float, replay_window: float = 0.0) -> int:
        """Delete events whose deliveries are all done (or that had none) and that were
        received more than ``older_than`` seconds ago; dead letters stay.

        The events, and ``seen_requests`` for requests coalesced into one, are the record
        of the requests seen: one signed less than ``replay_window`` seconds ago stays until
        it is older, or a replay would be new.
        """
        now = time.time()
        received, signed = now - older_than, now - replay_window
        return await self.run(lambda conn: operations.purge(conn, received, signed))

    async def stats(self, now: float | None = None) -> QueueStats:
        """Deliveries per state and per handler, and the age of the oldest due pending one."""
        moment = time.time() if now is None else now
        return await self._operate(lambda conn: actions.stats(conn, moment))

    async def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[ListedDelivery]:
        """Deliveries, newest first, optionally of one state and one handler."""
        return await self._operate(
            lambda conn: actions.list_deliveries(conn, state, handler, limit)
        )

    async def show(self, event_id: str) -> EventDetail | None:
        """One event, its payload and its deliveries; None if there is no such event."""
        return await self._operate(lambda conn: actions.show(conn, event_id))

    async def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """Make dead deliveries (of event ids, or delivery ids: numbers) pending again."""
        wanted = list(ids)
        return await self._operate(lambda conn: actions.replay(conn, wanted, all_dead), write=True)

    async def purge_dead(self, older_than: float) -> int:
        """Delete dead deliveries last touched more than ``older_than`` seconds ago."""
        return await self._operate(lambda conn: actions.purge_dead(conn, older_than), write=True)

    async def list_page(
        self, wanted: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage:
        """Deliveries ``wanted``, newest first, a page from ``cursor`` on."""
        return await self._operate(lambda conn: actions.list_page(conn, wanted, limit, cursor))

    async def event_of(self, delivery_id: str) -> str | None:
        """The event id of a delivery (a number), None if none."""
        return await self._operate(lambda conn: actions.event_of(conn, delivery_id))

    async def replay_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """`replay` each of ``ids`` on its own: what each replayed, or why not."""
        wanted = list(ids)
        return await self._operate(lambda conn: actions.replay_items(conn, wanted), write=True)

    async def purge_items(self, ids: Sequence[str]) -> list[ItemResult]:
        """Delete the dead deliveries of each of ``ids``: what each purged, or why not."""
        wanted = list(ids)
        return await self._operate(lambda conn: actions.purge_items(conn, wanted), write=True)

    async def replay_matching(self, wanted: DeliveryFilter) -> int:
        """Make every dead delivery ``wanted`` matches pending again."""
        return await self._operate(lambda conn: actions.replay_matching(conn, wanted), write=True)

    async def purge_matching(self, wanted: DeliveryFilter, older_than: float) -> int:
        """Delete the dead deliveries ``wanted`` matches, dead longer than ``older_than``."""
        return await self._operate(
            lambda conn: actions.purge_matching(conn, wanted, older_than), write=True
        )

    async def _operate(self, action: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """Run one of the operator's actions: a daemon's writes in its writer's next batch,
        reads (and an operator's writes, each its own transaction) on the reading
        connection; every failure a `QueueError`."""
        try:
            if self._closed:
                raise closed_error()
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
        # Only once all is closed: a close cut short keeps the spool locked rather than let
        # another daemon in beside a writer still running (the process's end releases it).
        if self._lock is not None:
            self._lock.release()


def _in_transaction(action: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``action`` in a write transaction of its own on ``conn``."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return action(conn)
