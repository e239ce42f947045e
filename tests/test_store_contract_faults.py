"""The store's contract under faults made for real: a full disk, a held lock, a full or
stopped Redis (see `store_contract`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from redis_support import RedisServer
from store_contract import (
    BACKENDS,
    LATER,
    Backend,
    claim_confirmed,
    finish_ok,
    states,
)
from support import incoming

from frameiod.store.base import Accepted, SpoolBackend, SpoolUnavailable

# Its fixtures: `backend`, `store`, `filled` and `shared`.
pytest_plugins = ["store_contract"]


class Fault:
    """One backend's store made to refuse writes, and given back."""

    reason: str
    detail: str
    """What the error's detail says, in part."""

    def __init__(self, backend: Backend, store: SpoolBackend) -> None:
        self.backend = backend
        self.store = store

    async def begin(self) -> None:
        """Make the store refuse every write that needs room or the lock."""
        raise NotImplementedError

    async def end(self) -> None:
        """Give the store back."""
        raise NotImplementedError


class FullSqlite(Fault):
    """The SQLite file on a small tmpfs filled to its last byte: a full disk.

    SQLite reuses its WAL file's room once a checkpoint has caught up, so a write on a full
    disk could still succeed by luck; a read snapshot held open on the file (as an
    operator's ``sqlite3`` shell would) makes every write grow the WAL, and fail.
    """

    reason, detail = "spool_full", "the spool's disk is full"
    snapshot: sqlite3.Connection | None = None

    @property
    def filler(self) -> Path:
        return self.backend.directory / "filler"

    async def begin(self) -> None:
        db = self.backend.directory / "frameiod.db"
        self.snapshot = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        self.snapshot.execute("BEGIN")
        self.snapshot.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        with self.filler.open("wb", buffering=0) as out:
            for size in (1 << 16, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * size)

    async def end(self) -> None:
        self.filler.unlink(missing_ok=True)
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None


class FullRedis(Fault):
    """Redis at its memory limit, with the default policy ``noeviction``."""

    reason, detail = "redis_refused", "used memory > 'maxmemory'"

    def _maxmemory(self, value: int) -> None:
        assert self.backend.server is not None
        with redis.Redis(port=self.backend.server.port) as client:
            client.config_set("maxmemory", value)

    async def begin(self) -> None:
        self._maxmemory(1)

    async def end(self) -> None:
        self._maxmemory(0)


class LockedSqlite(Fault):
    """Another process holds SQLite's write lock. The spool's writer waits for it up to
    its busy timeout (5 s, kept short here so that the test need not wait)."""

    reason, detail = "spool_busy", "the spool is locked"
    holder: sqlite3.Connection | None = None

    async def _busy_timeout(self, ms: int) -> None:
        await self.store.run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(f"PRAGMA busy_timeout = {ms}")
        )

    async def begin(self) -> None:
        await self._busy_timeout(50)
        self.holder = sqlite3.connect(self.backend.directory / "frameiod.db", isolation_level=None)
        self.holder.execute("BEGIN IMMEDIATE")

    async def end(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()
            self.holder = None
        await self._busy_timeout(5000)


class StoppedRedis(Fault):
    """The redis-server stopped (its AOF, fsynced on every write, keeps what it took)."""

    reason, detail = "redis_unavailable", "cannot be reached"

    async def begin(self) -> None:
        assert self.backend.server is not None
        await asyncio.to_thread(self.backend.server.stop)

    async def end(self) -> None:
        assert self.backend.server is not None
        if self.backend.server.process is None:
            await asyncio.to_thread(self.backend.server.start)


FAULTS: dict[str, dict[str, type[Fault]]] = {
    "full": {"sqlite": FullSqlite, "redis": FullRedis},
    "unreachable": {"sqlite": LockedSqlite, "redis": StoppedRedis},
}


@pytest.fixture(params=[(kind, name) for name in FAULTS for kind in BACKENDS],
                ids=lambda p: f"{p[0]}-{p[1]}")  # fmt: skip
async def faulty(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Backend, SpoolBackend, Fault]]:
    """A store of each backend with a fault of each kind ready to begin; Redis on a server
    of the test's own, since the fault stops or fills it."""
    kind, name = request.param
    server = None
    directory = tmp_path / "store"
    if kind == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()
    elif name == "full":
        directory = request.getfixturevalue("small_disk")
    made = Backend(kind, directory, server)
    try:
        store = await made.open()
        fault = FAULTS[name][kind](made, store)
        try:
            yield made, store, fault
        finally:
            await fault.end()
            await made.close_all()
    finally:
        if server is not None:
            server.stop()


class TestFaults:
    async def test_a_store_refusing_writes_says_why_loses_nothing_and_recovers(
        self, faulty: tuple[Backend, SpoolBackend, Fault]
    ):
        backend, store, fault = faulty
        acknowledged = [incoming(os.urandom(3000)) for _ in range(3)]
        for event in acknowledged:
            await store.accept(event, ["h"])
        await fault.begin()

        # Some writes may still fit (a page with room left); one that needs room fails.
        refused = None
        for _ in range(50):
            event = incoming(os.urandom(3000))
            try:
                accepted = await store.accept(event, ["h"])
            except SpoolUnavailable as exc:
                failure, refused = exc, event
                break
            assert accepted == Accepted(event.id, False, 1)
            acknowledged.append(event)
        assert refused is not None, "the store never refused a write"
        assert failure.reason == fault.reason, failure
        assert fault.detail in failure.detail
        with pytest.raises(SpoolUnavailable) as caught:
            await store.check()
        assert caught.value.reason == fault.reason

        await fault.end()

        async with asyncio.timeout(10):
            await store.check()
        assert await store.accept(refused, ["h"]) == Accepted(refused.id, False, 1)
        assert backend.event_ids() == {e.id for e in (*acknowledged, refused)}
        claimed = await claim_confirmed(store, 100, {"h": 100})
        assert sorted(c.event_id for c in claimed) == sorted(e.id for e in (*acknowledged, refused))

    async def test_no_claim_is_on_record_while_the_store_cannot_be_reached(
        self, faulty: tuple[Backend, SpoolBackend, Fault]
    ):
        backend, store, fault = faulty
        event = incoming()
        await store.accept(event, ["h"])
        await fault.begin()

        # The claim is refused, or its mark is: either way no call may start.
        refusals: list[SpoolUnavailable] = []
        try:
            claimed = await store.claim(1, {"h": 1})
        except SpoolUnavailable as exc:
            refusals.append(exc)
        else:
            for item in claimed:
                with pytest.raises(SpoolUnavailable) as caught:
                    await store.confirm(item)
                refusals.append(caught.value)
        assert [refusal.reason for refusal in refusals] == [fault.reason]

        await fault.end()
        backend.let_leases_lapse()

        [item] = await claim_confirmed(store, 1, {"h": 1}, now=time.time() + LATER)
        assert item.event_id == event.id
        await finish_ok(store, item)
        assert await states(store, event.id) == {"h": ("done", item.attempts)}
