"""The spool against real SQLite files: settings, duplicates, group commit, claims, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import incoming, on_the_daemons_loop, wait_until

import frameiod.store.base as base_module
import frameiod.store.sqlite.spool as spool_module
import frameiod.store.sqlite.writer as writer_module
from frameiod import idle
from frameiod.store.base import Accepted, Incoming, QueueError, SpoolError, SpoolUnavailable
from frameiod.store.sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Spool,
    actions,
    body_hash,
    operations,
)
from frameiod.store.sqlite.lock import SpoolLock
from frameiod.store.sqlite.schema import body_key, connect_writer
from frameiod.store.sqlite.unstarted import Unstarted


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows as a separate connection sees them: what is committed, not what is cached."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


def states(path: Path, event_id: str) -> dict[str, str]:
    """Handler → delivery state for one event."""
    rows = query(path, "SELECT handler, state FROM deliveries WHERE event_id = ?", event_id)
    return dict(rows)


def event_ids(path: Path) -> set[str]:
    return {row[0] for row in query(path, "SELECT id FROM events")}


@contextlib.asynccontextmanager
async def writer_held(spool: Spool) -> AsyncIterator[None]:
    """Keep the writer thread busy inside one operation.

    Everything submitted in the body queues up behind it and, once released, runs as one
    batch: one transaction, one commit.
    """
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    held = spool.run(hold)
    await asyncio.to_thread(entered.wait, 10)
    try:
        yield
        # Tasks created in the body submit their operation on their first step: let them.
        await asyncio.sleep(0)
    finally:
        release.set()
        await held


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


@pytest.fixture
async def spool(path: Path) -> AsyncIterator[Spool]:
    opened = await Spool.open(path)
    yield opened
    await opened.close()


class TestOpen:
    async def test_a_new_spool_is_created_in_wal_mode_with_full_sync(self, tmp_path: Path):
        path = tmp_path / "state" / "nested" / "spool.db"
        spool = await Spool.open(path)
        try:
            level = await spool.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            await spool.close()
        assert level == 2
        assert query(path, "PRAGMA journal_mode") == [("wal",)]
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]

    async def test_synchronous_normal_is_applied_when_configured(self, path: Path):
        spool = await Spool.open(path, synchronous="NORMAL")
        try:
            level = await spool.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            await spool.close()
        assert level == 1

    @pytest.fixture
    def garbage(self, path: Path) -> bytes:
        """Bytes that are not SQLite, written where the spool should be."""
        data = bytes(range(256)) * 16
        path.write_bytes(data)
        return data

    async def test_a_file_that_is_not_sqlite_is_refused_with_advice(
        self, path: Path, garbage: bytes
    ):
        with pytest.raises(SpoolError) as caught:
            await Spool.open(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ")
        assert "move it aside" in message.lower()
        assert await asyncio.to_thread(path.read_bytes) == garbage, "the file must be left as is"

    async def test_a_spool_from_a_newer_frameiod_is_refused(self, path: Path):
        with closing(sqlite3.connect(path)) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(SpoolError, match="newer frameiod") as caught:
            await Spool.open(path)
        assert str(path) in str(caught.value)
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]

    async def test_a_new_spool_is_marked_as_frameiods(self, path: Path):
        await (await Spool.open(path)).close()
        assert query(path, "PRAGMA application_id") == [(APPLICATION_ID,)]

    async def test_a_database_marked_by_another_application_is_refused_untouched(self, path: Path):
        with closing(sqlite3.connect(path)) as db:
            db.executescript(_SCHEMA_1.replace("PRAGMA user_version = 1;", ""))
            db.execute("PRAGMA application_id = 1234")
            db.commit()
        before = await asyncio.to_thread(path.read_bytes)
        with pytest.raises(SpoolError, match="not a frameiod spool") as caught:
            await Spool.open(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert "application_id 0x4d2" in str(caught.value)
        assert await asyncio.to_thread(path.read_bytes) == before

    async def test_frameiods_tables_beside_others_are_not_taken_for_a_spool(self, path: Path):
        with closing(sqlite3.connect(path)) as db:
            db.executescript(_SCHEMA_1)
            db.execute("CREATE TABLE foo (x)")
        with pytest.raises(SpoolError, match="not a frameiod spool") as caught:
            await Spool.open(path)
        assert "foo" in str(caught.value)
        assert query(path, "PRAGMA user_version") == [(1,)]

    async def test_a_new_spools_files_are_owner_only_whatever_the_umask(self, path: Path):
        previous = os.umask(0)
        try:
            spool = await Spool.open(path)
        finally:
            os.umask(previous)
        try:
            await spool.accept(incoming(), [])
            companions = [path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))]
            assert [stat.S_IMODE(file.stat().st_mode) for file in companions] == [0o600] * 3
        finally:
            await spool.close()

    async def test_a_folder_that_cannot_be_created_is_refused(self, tmp_path: Path):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        path = blocker / "spool.db"
        with pytest.raises(SpoolError, match="cannot open the spool") as caught:
            await Spool.open(path)
        assert str(path) in str(caught.value)


# The schema frameiod wrote before the duplicate checks used 64-bit keys (version 1).
_SCHEMA_1 = """
CREATE TABLE events (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL,
    body_hash BLOB NOT NULL, timestamp INTEGER NOT NULL, signature TEXT NOT NULL,
    secret_id TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX events_request ON events (signature, timestamp);
CREATE INDEX events_body ON events (source, body_hash);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_outcome TEXT,
    last_error TEXT, last_seconds REAL, updated_at REAL NOT NULL
);
CREATE INDEX deliveries_due_by_handler ON deliveries (state, handler, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
PRAGMA user_version = 1;
"""


class TestUpgradeFromSchema1:
    @pytest.fixture
    def old(self, path: Path) -> Incoming:
        """A version-1 spool at ``path`` holding one event with a pending delivery."""
        event = incoming()
        with closing(sqlite3.connect(path)) as db:
            db.executescript(_SCHEMA_1)
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.source,
                    event.type,
                    event.body,
                    body_hash(event.body),
                    event.timestamp,
                    event.signature,
                    event.secret_id,
                    event.received_at,
                ),
            )
            db.execute(
                "INSERT INTO deliveries (event_id, handler, state, next_attempt_at, updated_at)"
                " VALUES (?, 'p.h', 'pending', 0, 0)",
                (event.id,),
            )
            db.commit()
        return event

    async def test_the_file_is_upgraded_in_place_and_keeps_its_events(
        self, path: Path, old: Incoming
    ):
        spool = await Spool.open(path)
        await spool.close()
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        indexes = {
            row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"events_request_key", "seen_requests_key"} <= indexes
        assert not {"events_request", "events_body", "deliveries_unstarted_body"} & indexes
        assert query(path, "SELECT id, body FROM events") == [(old.id, old.body)]
        assert states(path, old.id) == {"p.h": "pending"}

    async def test_an_old_spool_has_no_mark_and_is_marked_when_opened(
        self, path: Path, old: Incoming
    ):
        assert query(path, "PRAGMA application_id") == [(0,)]
        await (await Spool.open(path)).close()
        assert query(path, "PRAGMA application_id") == [(APPLICATION_ID,)]

    async def test_old_events_are_still_found_by_both_duplicate_checks(
        self, path: Path, old: Incoming
    ):
        spool = await Spool.open(path)
        try:
            again = incoming(old.body, id="new-1", signature=old.signature, timestamp=old.timestamp)
            same_body = incoming(old.body, id="new-2")
            assert await spool.accept(again, ["p.h"]) == Accepted(old.id, True, 0)
            assert await spool.accept(same_body, ["p.h"]) == Accepted(old.id, True, 0)
        finally:
            await spool.close()
        assert event_ids(path) == {old.id}


async def coalesced_twin(spool: Spool, old: Incoming) -> Incoming:
    """Accept ``old``'s body again, signed a second later: it must join ``old``, whose
    delivery waits. Returns that second request."""
    twin = incoming(old.body, timestamp=old.timestamp + 1)
    assert await spool.accept(twin, ["p.h"]) == Accepted(old.id, True, 0)
    return twin


class TestUpgradeFromSchema2:
    @pytest.fixture
    async def old(self, path: Path) -> Incoming:
        """A version-2 spool at ``path`` (today's, less the seen_requests table it lacked)
        holding one event whose delivery waits."""
        spool = await Spool.open(path)
        event = incoming()
        await spool.accept(event, ["p.h"])
        await spool.close()
        with closing(sqlite3.connect(path)) as db:
            db.executescript(
                "DROP INDEX IF EXISTS seen_requests_key; DROP TABLE IF EXISTS seen_requests;"
                " ALTER TABLE events DROP COLUMN trace_context; PRAGMA user_version = 2;"
            )
        return event

    async def test_the_file_is_upgraded_in_place_and_says_so(self, path: Path, old: Incoming):
        with capture_logs() as logs:
            await (await Spool.open(path)).close()
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert query(path, "SELECT name FROM sqlite_master WHERE tbl_name = 'seen_requests'")
        assert states(path, old.id) == {"p.h": "pending"}
        [upgraded] = [line for line in logs if line["event"] == "spool upgraded"]
        assert (upgraded["schema_from"], upgraded["schema_to"]) == (2, SCHEMA_VERSION)

    async def test_an_unmarked_schema_2_spool_opens_and_is_marked(self, path: Path, old: Incoming):
        with closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA application_id = 0")
            db.commit()
        await (await Spool.open(path)).close()
        assert query(path, "PRAGMA application_id") == [(APPLICATION_ID,)]
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert query(path, "SELECT name FROM sqlite_master WHERE tbl_name = 'seen_requests'")

    async def test_a_request_coalesced_after_the_upgrade_is_remembered(
        self, path: Path, old: Incoming
    ):
        spool = await Spool.open(path)
        try:
            twin = await coalesced_twin(spool, old)
            await spool.claim(1, {"p.h": 1})
            replay = incoming(old.body, timestamp=twin.timestamp, signature=twin.signature)
            assert await spool.accept(replay, ["p.h"]) == Accepted(old.id, True, 0)
        finally:
            await spool.close()
        assert event_ids(path) == {old.id}


async def one_waiting_then(path: Path, script: str) -> Incoming:
    """Today's spool at ``path`` holding one event whose delivery waits, then ``script`` run
    on it (to make it an older schema's); returns the event."""
    spool = await Spool.open(path)
    event = incoming()
    await spool.accept(event, ["p.h"])
    await spool.close()
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)
    return event


class TestUpgradeFromSchema3:
    TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    @pytest.fixture
    async def old(self, path: Path) -> Incoming:
        """A version-3 spool at ``path`` (today's, less the trace context column) holding
        one event whose delivery waits."""
        return await one_waiting_then(
            path, "ALTER TABLE events DROP COLUMN trace_context; PRAGMA user_version = 3;"
        )

    async def test_events_gain_a_trace_context_and_old_ones_claim_without(
        self, path: Path, old: Incoming
    ):
        with capture_logs() as logs:
            spool = await Spool.open(path)
        try:
            [upgraded] = [line for line in logs if line["event"] == "spool upgraded"]
            assert (upgraded["schema_from"], upgraded["schema_to"]) == (3, SCHEMA_VERSION)
            await spool.accept(incoming(trace_context=self.TRACE), ["p.h"])
            claimed = await spool.claim(2, {"p.h": 2})
            assert [c.trace_context for c in claimed] == [None, self.TRACE]
        finally:
            await spool.close()
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


class TestUpgradeFromSchema4:
    @pytest.fixture
    async def old(self, path: Path) -> Incoming:
        """A version-4 spool at ``path`` (today's, its deliveries' state checked with an IN
        list) holding one event whose delivery waits and one whose delivery is done."""
        spool = await Spool.open(path)
        waiting, done = incoming(), incoming()
        await spool.accept(done, ["p.h"])
        [claimed] = await spool.claim(1, {"p.h": 1})
        await spool.finish(claimed.delivery_id, outcome="ok", seconds=0.5, error=None)
        await spool.accept(waiting, ["p.h"])
        await spool.close()
        with closing(sqlite3.connect(path)) as db:
            [ddl] = db.execute("SELECT sql FROM sqlite_master WHERE name = 'deliveries'").fetchone()
            check = ddl[ddl.index("CHECK (") : ddl.index("),\n", ddl.index("CHECK ("))]
            old_ddl = ddl.replace(check, "CHECK (state IN ('pending', 'running', 'done', 'dead')")
            db.executescript(
                f"{old_ddl.replace('deliveries', 'deliveries_4', 1)};"
                " INSERT INTO deliveries_4 SELECT * FROM deliveries; DROP TABLE deliveries;"
                " ALTER TABLE deliveries_4 RENAME TO deliveries;"
                " CREATE INDEX deliveries_unstarted_body ON deliveries (body_key)"
                " WHERE attempts = 0; CREATE INDEX deliveries_due_by_handler"
                " ON deliveries (state, handler, next_attempt_at);"
                " CREATE INDEX deliveries_event ON deliveries (event_id); PRAGMA user_version = 4;"
            )
        return waiting

    def deliveries(self, path: Path) -> list[tuple[Any, ...]]:
        return query(path, "SELECT * FROM deliveries ORDER BY id")

    async def test_the_deliveries_are_kept_as_they_were_under_the_new_check(
        self, path: Path, old: Incoming
    ):
        before = self.deliveries(path)
        with capture_logs() as logs:
            await (await Spool.open(path)).close()
        [upgraded] = [line for line in logs if line["event"] == "spool upgraded"]
        assert (upgraded["schema_from"], upgraded["schema_to"]) == (4, SCHEMA_VERSION)
        assert self.deliveries(path) == before
        assert [row[3] for row in before] == ["done", "pending"]
        [ddl] = query(path, "SELECT sql FROM sqlite_master WHERE name = 'deliveries'")
        assert " IN (" not in ddl[0]
        assert "state = 'dead'" in ddl[0]
        indexes = query(
            path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'"
        )
        assert {row[0] for row in indexes} == {
            "deliveries_due_by_handler",
            "deliveries_event",
        }
        assert query(path, "PRAGMA foreign_key_check") == []

    async def test_the_check_still_refuses_an_unknown_state(self, path: Path, old: Incoming):
        await (await Spool.open(path)).close()
        with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.IntegrityError) as caught:
            db.execute("UPDATE deliveries SET state = 'lost'")
        assert "CHECK constraint failed" in str(caught.value)

    async def test_a_waiting_event_still_takes_in_an_identical_body(
        self, path: Path, old: Incoming
    ):
        spool = await Spool.open(path)
        try:
            await coalesced_twin(spool, old)
            [claimed] = await spool.claim(2, {"p.h": 2})
            assert claimed.event_id == old.id
        finally:
            await spool.close()


class TestUpgradeFromSchema5:
    @pytest.fixture
    async def old(self, path: Path) -> Incoming:
        """A schema-5 spool at ``path`` (its unstarted bodies indexed), one event waiting."""
        return await one_waiting_then(
            path,
            "CREATE INDEX deliveries_unstarted_body ON deliveries (body_key)"
            " WHERE attempts = 0; PRAGMA user_version = 5;",
        )

    async def test_the_body_index_is_dropped_and_the_waiting_event_still_joined(
        self, path: Path, old: Incoming
    ):
        with capture_logs() as logs:
            spool = await Spool.open(path)
        try:
            await coalesced_twin(spool, old)
        finally:
            await spool.close()
        [upgraded] = [line for line in logs if line["event"] == "spool upgraded"]
        assert (upgraded["schema_from"], upgraded["schema_to"]) == (5, 6)
        assert not query(path, "SELECT name FROM sqlite_master WHERE name LIKE '%body%'")
        assert event_ids(path) == {old.id}


class TestCoalescing:
    """Which event an identical body joins is remembered in memory, and checked in SQL."""

    async def test_an_event_waiting_when_the_spool_opens_is_joined(self, path: Path):
        spool = await Spool.open(path)
        waiting = incoming()
        await spool.accept(waiting, ["p.h"])
        await spool.close()
        spool = await Spool.open(path)
        try:
            await coalesced_twin(spool, waiting)
        finally:
            await spool.close()

    @pytest.mark.parametrize(
        "change",
        [
            "UPDATE deliveries SET attempts = 1 WHERE handler = 'p.h'",
            "UPDATE deliveries SET state = 'running', attempts = 1 WHERE handler = 'p.h'",
            "UPDATE deliveries SET state = 'dead' WHERE handler = 'p.i'",
            "DELETE FROM deliveries WHERE true",
        ],
        ids=["a-retry-waits", "one-of-two-started", "one-of-two-dead-unattempted", "gone"],
    )
    async def test_an_event_changed_by_another_connection_is_not_joined(
        self, spool: Spool, path: Path, change: str
    ):
        # Another process (`frameiod queue`, a test) changes what the writer remembers as
        # waiting: the spool's own check must see it, and the body must not be lost in
        # an event that will never run, or has run already.
        first = incoming()
        await spool.accept(first, ["p.h", "p.i"])
        with closing(sqlite3.connect(path)) as db:
            db.execute(change + " AND event_id = ?", (first.id,))
            db.commit()
        second = incoming(first.body, timestamp=first.timestamp + 1)
        assert await spool.accept(second, ["p.h", "p.i"]) == Accepted(second.id, False, 2)
        assert states(path, second.id) == {"p.h": "pending", "p.i": "pending"}
        # Remembered in place of the first: the next identical body joins the second.
        third = incoming(first.body, timestamp=first.timestamp + 2)
        assert await spool.accept(third, ["p.h", "p.i"]) == Accepted(second.id, True, 0)

    async def test_the_same_body_from_two_sources_or_secrets_joins_its_own(self, spool: Spool):
        body = incoming().body
        kinds = [{}, {"source": "other"}, {"secret_id": "1"}]
        firsts = [incoming(body, **kind) for kind in kinds]
        for event in firsts:
            assert (await spool.accept(event, ["p.h"])).duplicate is False
        for number, (kind, first) in enumerate(zip(kinds, firsts, strict=True)):
            again = incoming(body, timestamp=first.timestamp + 1 + number, **kind)
            assert await spool.accept(again, ["p.h"]) == Accepted(first.id, True, 0)

    def test_what_is_remembered_is_the_waiting_events_only(self, path: Path):
        # Kept for as long as an event waits, and not one started in its accept: the memory
        # follows the backlog, not every event the spool keeps.
        conn = connect_writer(path, "NORMAL")
        try:
            unstarted = Unstarted()
            waiting = [incoming() for _ in range(5)]
            for event in waiting:
                operations.accept(conn, event, ["p.h", "p.i"], unstarted)
            operations.accept(conn, incoming(), ["p.h"], unstarted, starting=["p.h"])
            operations.accept(conn, incoming(), [], unstarted)
            assert len(unstarted) == 5
            claimed = operations.claim(conn, 3, {"p.h": 3}, time.time(), unstarted)
            assert [item.event_id for item in claimed] == [event.id for event in waiting[:3]]
            assert [candidate(unstarted, event) for event in waiting] == [
                None,
                None,
                None,
                waiting[3].id,
                waiting[4].id,
            ]
            # Opened again, the same: events with a delivery started are not remembered.
            reopened = Unstarted()
            reopened.load(conn)
            assert [candidate(reopened, event) for event in waiting] == [
                None,
                None,
                None,
                waiting[3].id,
                waiting[4].id,
            ]
        finally:
            conn.close()

    @pytest.mark.parametrize("purge", ["all", "by-id"])
    def test_an_event_a_purge_left_with_deliveries_is_not_remembered(self, path: Path, purge: str):
        # Its handler p.h died and the dead letter is gone: the event's one delivery left
        # has never run, but the event has, and no body may join it (the contract test
        # shows the join refused; this, that it takes no place in memory either).
        conn = connect_writer(path, "NORMAL")
        try:
            unstarted = Unstarted()
            first, second = incoming(), incoming()
            for event in (first, second):
                operations.accept(conn, event, ["p.h", "p.i"], unstarted)
            conn.execute(
                "UPDATE deliveries SET state = 'dead', attempts = 1, updated_at = 0"
                " WHERE handler = 'p.h' AND event_id = ?",
                (first.id,),
            )
            if purge == "all":
                assert actions.purge_dead(conn, older_than=0) == 1
            else:
                assert actions.purge_items(conn, [first.id])[0]["count"] == 1
            reopened = Unstarted()
            reopened.load(conn)
            assert [candidate(reopened, e) for e in (first, second)] == [None, second.id]
        finally:
            conn.close()

    def test_an_event_found_started_is_forgotten(self, path: Path):
        conn = connect_writer(path, "NORMAL")
        try:
            unstarted = Unstarted()
            first = incoming()
            operations.accept(conn, first, ["p.h"], unstarted)
            conn.execute("UPDATE deliveries SET state = 'running', attempts = 1")
            # Its twin is started in its accept: nothing is left to remember for that body.
            twin = incoming(first.body, timestamp=first.timestamp + 1)
            operations.accept(conn, twin, ["p.h"], unstarted, starting=["p.h"])
            assert len(unstarted) == 0
        finally:
            conn.close()

    def test_past_its_limit_a_waiting_event_is_not_joined_and_memory_stays_bounded(
        self, path: Path
    ):
        conn = connect_writer(path, "NORMAL")
        try:
            unstarted = Unstarted(limit=3)
            waiting = [incoming() for _ in range(5)]
            for event in waiting:
                operations.accept(conn, event, ["p.h", "p.i"], unstarted)
            assert len(unstarted) == 3
            twins = []
            for event, joined in zip(waiting, [True, True, True, False, False], strict=True):
                twins.append(incoming(event.body, timestamp=event.timestamp + 1))
                answer = operations.accept(conn, twins[-1], ["p.h", "p.i"], unstarted)
                assert answer.duplicate is joined
            # Opened again, the newest three events are remembered (two deliveries each):
            # the last two twins, new events, and the last event before them.
            reopened = Unstarted(limit=3)
            reopened.load(conn)
            assert len(reopened) == 3
            assert [candidate(reopened, event) for event in waiting] == [
                None,
                None,
                waiting[2].id,
                twins[3].id,
                twins[4].id,
            ]
        finally:
            conn.close()


def candidate(unstarted: Unstarted, event: Incoming) -> str | None:
    """The event a body identical to ``event``'s, from its source, may join."""
    return unstarted.candidate(event.source, event.secret_id, body_key(body_hash(event.body)))


class TestDuplicates:
    async def test_a_coalesced_request_again_is_a_duplicate_once_its_event_has_started(
        self, spool: Spool, path: Path
    ):
        original = incoming()
        await spool.accept(original, ["a"])
        twin = incoming(original.body, timestamp=original.timestamp + 5)
        assert await spool.accept(twin, ["a"]) == Accepted(original.id, True, 0)
        [claimed] = await spool.claim(1, {"a": 1})
        await spool.finish(claimed.delivery_id, outcome="ok", seconds=0.1, error=None)

        replay = incoming(original.body, timestamp=twin.timestamp, signature=twin.signature)
        assert await spool.accept(replay, ["a"]) == Accepted(original.id, True, 0)
        # Only the request coalesced is recorded beside the events; a replay adds nothing.
        assert event_ids(path) == {original.id}
        assert query(path, "SELECT event_id, timestamp, signature FROM seen_requests") == [
            (original.id, twin.timestamp, twin.signature)
        ]


class TestGroupCommit:
    async def test_concurrent_accepts_share_transactions(self, spool: Spool, path: Path):
        before = spool.batches
        events = [incoming() for _ in range(200)]
        results = await asyncio.gather(*(spool.accept(event, ["a"]) for event in events))
        assert [result.id for result in results] == [event.id for event in events]
        assert not any(result.duplicate for result in results)
        assert query(path, "SELECT COUNT(*) FROM events") == [(200,)]
        assert query(path, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == [(200,)]
        assert spool.batches - before < 100

    async def test_operations_queued_while_the_writer_is_busy_form_one_batch(
        self, spool: Spool, path: Path
    ):
        before = spool.batches
        events = [incoming() for _ in range(50)]
        async with writer_held(spool):
            pending = asyncio.gather(*(spool.accept(event, ["a"]) for event in events))
        await pending
        assert spool.batches - before == 2  # the held operation's batch, then all 50
        assert len(event_ids(path)) == 50

    async def test_a_failing_operation_fails_alone(self, spool: Spool, path: Path):
        events = [incoming() for _ in range(10)]
        async with writer_held(spool):
            before = asyncio.gather(*(spool.accept(event, ["a"]) for event in events[:5]))
            bad = spool.run(lambda c: c.execute("SELECT * FROM no_such_table").fetchall())
            after = asyncio.gather(*(spool.accept(event, ["a"]) for event in events[5:]))
        results = [*await before, *await after]
        with pytest.raises(SpoolUnavailable, match="no_such_table") as caught:
            await bad
        assert caught.value.reason == "spool_error"
        assert [result.id for result in results] == [event.id for event in events]
        assert event_ids(path) == {event.id for event in events}

    async def test_an_exception_from_an_operation_reaches_its_caller_unchanged(
        self, spool: Spool, path: Path
    ):
        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM events")
            raise LookupError("the operation's own bug")

        event = incoming()
        await spool.accept(event, ["a"])
        with pytest.raises(LookupError, match="the operation's own bug"):
            await spool.run(broken)
        assert event_ids(path) == {event.id}, "the failed operation's writes are undone"


class TestLoopsThatGoAway:
    def test_a_loop_closed_before_its_writes_are_settled_does_not_stop_the_writer(self, path: Path):
        spool = asyncio.run(Spool.open(path))
        event = incoming()

        async def leave_a_write_behind() -> None:
            spool.run(lambda conn: time.sleep(0.1))  # still running when this loop closes

        asyncio.run(leave_a_write_behind())

        async def accept_then_close() -> Accepted:
            try:
                return await asyncio.wait_for(spool.accept(event, ["a"]), 5)
            finally:
                await spool.close()

        assert asyncio.run(accept_then_close()) == Accepted(event.id, duplicate=False, deliveries=1)
        assert event_ids(path) == {event.id}


class TestHeldForAnIdleLoop:
    """With the daemon's hand-over, on its event loop, operations go to the writer together
    when it runs out of work (`frameiod.idle`); on any other loop, or without a hand-over
    (the rest of this file), one by one."""

    # Long, so that the tests' own timing cannot decide what shares a batch.
    HOLD = 10.0

    @pytest.fixture(autouse=True)
    def long_hold(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The spool's own holds, and the probe `Spool.open` makes with the base's.
        for module in (spool_module, base_module):
            monkeypatch.setattr(module, "HOLD_AT_MOST", self.HOLD)

    def test_operations_submitted_while_the_loop_is_busy_share_one_batch(self, path: Path):
        async def scenario() -> int:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                before = spool.batches
                accepts = []
                for _ in range(5):
                    accepts.append(asyncio.ensure_future(spool.accept(incoming(), ["a"])))
                    await asyncio.sleep(0)  # the accept is submitted
                    # Busy, but with the GIL free: time for the writer to commit, were the
                    # accept in its queue already.
                    time.sleep(0.02)  # noqa: ASYNC251 - blocks the loop on purpose
                await asyncio.gather(*accepts)
                return spool.batches - before
            finally:
                await spool.close()

        assert on_the_daemons_loop(scenario) == 1
        assert len(event_ids(path)) == 5

    def test_a_hand_over_beyond_the_batch_limit_is_committed_in_slices(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setattr(writer_module, "_BATCH_LIMIT", 4)

        async def scenario() -> int:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                before = spool.batches
                await asyncio.gather(*(spool.accept(incoming(), ["a"]) for _ in range(10)))
                return spool.batches - before
            finally:
                await spool.close()

        assert on_the_daemons_loop(scenario) == 3  # 4 + 4 + 2
        assert len(event_ids(path)) == 10

    def test_a_lone_operation_goes_as_soon_as_the_loop_is_idle(self, path: Path):
        async def scenario() -> float:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                started = time.monotonic()
                for _ in range(3):
                    await spool.accept(incoming(), ["a"])
                return time.monotonic() - started
            finally:
                await spool.close()

        assert on_the_daemons_loop(scenario) < self.HOLD / 2

    def test_a_loop_that_stays_busy_hands_them_over_after_the_hold(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        for module in (spool_module, base_module):
            monkeypatch.setattr(module, "HOLD_AT_MOST", 0.05)

        async def scenario() -> tuple[float, int]:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            loop = asyncio.get_running_loop()
            spins = 0

            def spin() -> None:  # keeps the loop from ever waiting for I/O
                nonlocal spins
                spins += 1
                if not accepted.done() and time.monotonic() - started < 5:
                    loop.call_soon(spin)

            try:
                started = time.monotonic()
                accepted = asyncio.ensure_future(spool.accept(incoming(), ["a"]))
                loop.call_soon(spin)
                await accepted
                return time.monotonic() - started, spins
            finally:
                await spool.close()

        took, spins = on_the_daemons_loop(scenario)
        assert 0.05 <= took < 5
        assert spins > 1  # the loop was busy all along, never idle

    def finish_all_at_once(self, path: Path) -> list[BaseException | None]:
        """Accept and claim six deliveries, then finish them in one loop turn: two ok, two
        to retry, one dead, one ok again. Returns what each finish raised (None: nothing)."""

        async def scenario() -> list[BaseException | None]:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                for _ in range(6):
                    await spool.accept(incoming(), ["a"])
                claimed = await spool.claim(6, {"a": 6})
                outcomes = [
                    {"outcome": "ok", "error": None},
                    {"outcome": "ok", "error": None},
                    {"outcome": "error", "error": "boom", "next_attempt_at": 1e10},
                    {"outcome": "timeout", "error": "slow", "next_attempt_at": 1e10},
                    {"outcome": "error", "error": "gone", "dead": True},
                    {"outcome": "ok", "error": None},
                ]
                raised = await asyncio.gather(
                    *(
                        spool.finish(item.delivery_id, seconds=0.5, **outcome)
                        for item, outcome in zip(claimed, outcomes, strict=True)
                    ),
                    return_exceptions=True,
                )
                return [exc if isinstance(exc, BaseException) else None for exc in raised]
            finally:
                await spool.close()

        return on_the_daemons_loop(scenario)

    @pytest.fixture
    def written(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """How many rows each statement writing outcomes wrote, in order."""
        counts: list[int] = []
        finish = operations.finish

        def counted(conn: sqlite3.Connection, rows: list[operations.OutcomeRow]) -> None:
            counts.append(len(rows))
            finish(conn, rows)

        monkeypatch.setattr(operations, "finish", counted)
        return counts

    def test_outcomes_of_one_turn_are_written_by_one_statement(
        self, path: Path, written: list[int]
    ):
        assert self.finish_all_at_once(path) == [None] * 6
        assert written == [6]
        # Each row reached its own delivery, in the order of acceptance.
        assert query(
            path, "SELECT state, last_outcome, last_error, last_seconds FROM deliveries ORDER BY id"
        ) == [
            ("done", "ok", None, 0.5),
            ("done", "ok", None, 0.5),
            ("pending", "error", "boom", 0.5),
            ("pending", "timeout", "slow", 0.5),
            ("dead", "error", "gone", 0.5),
            ("done", "ok", None, 0.5),
        ]
        assert query(
            path, "SELECT DISTINCT next_attempt_at FROM deliveries WHERE state = ?", "pending"
        ) == [(1e10,)]

    def test_outcomes_after_the_hand_over_go_in_a_job_of_their_own(
        self, path: Path, written: list[int]
    ):
        async def scenario() -> None:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                for _ in range(5):
                    await spool.accept(incoming(), ["a"])
                claimed = await spool.claim(5, {"a": 5})

                def done(index: int) -> asyncio.Future[None]:
                    return asyncio.ensure_future(
                        spool.finish(
                            claimed[index].delivery_id, outcome="ok", seconds=0.1, error=None
                        )
                    )

                async with writer_held(spool):
                    first = [done(index) for index in range(3)]
                    # The loop goes idle: the first three's job is the writer's now, queued
                    # behind the held operation, and nothing may join it any more.
                    await asyncio.sleep(0.05)
                    later = [done(index) for index in range(3, 5)]
                    await asyncio.sleep(0.05)
                await asyncio.wait_for(asyncio.gather(*first, *later), 10)
            finally:
                await spool.close()

        on_the_daemons_loop(scenario)
        assert written == [3, 2]
        assert query(path, "SELECT state, COUNT(*) FROM deliveries GROUP BY state") == [("done", 5)]

    def test_a_refused_statement_fails_each_outcome_with_its_own_error(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        def refused(conn: sqlite3.Connection, rows: list[operations.OutcomeRow]) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(operations, "finish", refused)
        raised = self.finish_all_at_once(path)
        assert all(isinstance(exc, SpoolUnavailable) for exc in raised), raised
        assert {exc.detail for exc in raised if isinstance(exc, SpoolUnavailable)} == {
            "the spool failed: disk I/O error"
        }
        # One exception each: raised in six tasks, a shared one would gather six tracebacks.
        assert len({id(exc) for exc in raised}) == 6
        # Nothing was recorded: all six are still running, as their claim left them.
        assert query(path, "SELECT DISTINCT state, last_outcome FROM deliveries") == [
            ("running", None)
        ]

    def test_any_other_failure_reaches_each_caller_as_its_own_exception(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        def broken(conn: sqlite3.Connection, rows: list[operations.OutcomeRow]) -> None:
            raise ValueError("a row SQLite cannot take")

        monkeypatch.setattr(operations, "finish", broken)
        raised = self.finish_all_at_once(path)
        assert [type(exc) for exc in raised] == [ValueError] * 6
        assert {str(exc) for exc in raised} == {"a row SQLite cannot take"}
        assert len({id(exc) for exc in raised}) == 6

    def test_another_loops_write_goes_straight_to_the_writer(self, path: Path):
        elsewhere = incoming()
        answers: list[Accepted] = []

        def accept_on_a_loop_of_its_own(spool: Spool) -> None:
            answers.append(asyncio.run(asyncio.wait_for(spool.accept(elsewhere, ["a"]), 5)))

        async def scenario() -> bool:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            try:
                held = asyncio.ensure_future(spool.accept(incoming(), ["a"]))
                await asyncio.sleep(0)  # submitted, and held: this loop has not gone idle
                other = threading.Thread(target=accept_on_a_loop_of_its_own, args=(spool,))
                other.start()
                other.join(10)  # blocks this loop, which therefore keeps holding its write
                finished = not other.is_alive()
                await held
                return finished
            finally:
                await spool.close()

        assert on_the_daemons_loop(scenario)
        assert answers == [Accepted(elsewhere.id, duplicate=False, deliveries=1)]
        assert elsewhere.id in event_ids(path)

    def test_close_commits_what_is_still_held(self, path: Path):
        event = incoming()

        async def scenario() -> Accepted:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            accepted = spool.run(lambda conn: operations.accept(conn, event, ["a"], Unstarted()))
            await spool.close()  # before the loop has had a chance to go idle
            return await asyncio.wait_for(accepted, 5)

        assert on_the_daemons_loop(scenario) == Accepted(event.id, duplicate=False, deliveries=1)
        assert event_ids(path) == {event.id}

    def test_without_a_hand_over_each_operation_goes_to_the_writer_at_once(self, path: Path):
        async def scenario() -> tuple[str, int]:
            spool = await Spool.open(path)
            try:
                before = spool.batches
                accepts = []
                for _ in range(3):
                    accepts.append(asyncio.ensure_future(spool.accept(incoming(), ["a"])))
                    await asyncio.sleep(0)  # the accept is submitted
                    time.sleep(0.05)  # noqa: ASYNC251 - time for the writer to commit it
                await asyncio.gather(*accepts)
                return spool.handover, spool.batches - before
            finally:
                await spool.close()

        assert on_the_daemons_loop(scenario) == ("immediate", 3)

    def test_the_hand_over_in_force_is_said(self, path: Path):
        async def scenario() -> str:
            spool = await Spool.open(path, handover=idle.call_when_idle)
            await spool.close()
            return spool.handover

        assert on_the_daemons_loop(scenario) == "loop idle"
        # Another loop: the hand-over cannot serve it, and the spool does not pretend.
        assert asyncio.run(scenario()) == "immediate"


class TestClaim:
    async def test_due_deliveries_are_claimed_oldest_first_and_marked_running(
        self, spool: Spool, path: Path
    ):
        now = time.time()
        newest = incoming(received_at=now - 10)
        oldest = incoming(received_at=now - 30)
        middle = incoming(received_at=now - 20)
        for event in (newest, oldest):
            await spool.accept(event, ["h"])
        await spool.accept(middle, ["h", "g"])  # same due time: by delivery id

        claimed = await spool.claim(10, {"h": 10, "g": 10}, now=now)
        assert [(c.event_id, c.handler) for c in claimed] == [
            (oldest.id, "h"),
            (middle.id, "h"),
            (middle.id, "g"),
            (newest.id, "h"),
        ]
        first = claimed[0]
        assert (first.attempts, first.source, first.body, first.timestamp, first.received_at) == (
            1,
            "default",
            oldest.body,
            oldest.timestamp,
            oldest.received_at,
        )
        await spool.run(lambda conn: None)  # the claim's mark is queued, not awaited
        assert query(path, "SELECT DISTINCT state, attempts FROM deliveries") == [("running", 1)]
        assert await spool.claim(10, {"h": 10, "g": 10}, now=now) == []


class TestLock:
    @pytest.mark.filterwarnings("ignore:This process.*multi-threaded:DeprecationWarning")
    def test_a_child_forked_without_exec_does_not_hold_the_lock(self, tmp_path: Path):
        """A plugin's multiprocessing must not keep the spool locked after the daemon."""
        path = tmp_path / "frameiod.db"
        lock = SpoolLock.take(path)
        ready_reading, ready = os.pipe()
        done_reading, done = os.pipe()
        child = os.fork()
        if child == 0:  # forked (its at-fork hooks have run): says so, waits, leaves
            os.close(done)
            os.write(ready, b".")
            os.read(done_reading, 1)
            os._exit(0)
        os.close(ready)
        os.close(done_reading)
        try:
            assert os.read(ready_reading, 1) == b"."
            lock.release()
            again = SpoolLock.take(path)  # while the child lives
            again.release()
        finally:
            os.close(done)
            os.close(ready_reading)
            os.waitpid(child, 0)


class TestOpenedForTheOperator:
    """``frameiod queue`` opens the spool beside a running daemon: none of the daemon's
    start-up work, which would corrupt that daemon's state."""

    async def test_running_deliveries_stay_running_and_no_thread_starts(
        self, spool: Spool, path: Path
    ):
        await spool.accept(incoming(), ["h"])
        [claimed] = await spool.claim(1, {"h": 1})
        assert await spool.confirm(claimed)
        threads = {thread.name for thread in threading.enumerate()}

        operator = await Spool.open(path, role="operator")
        try:
            stats = await operator.stats()
            started = {thread.name for thread in threading.enumerate()} - threads
        finally:
            await operator.close()

        assert stats["deliveries"] == {"pending": 0, "running": 1, "done": 0, "dead": 0}
        assert query(path, "SELECT state FROM deliveries") == [("running",)]
        # Its reads run on a thread of its own, as any spool's; no writer, no checkpointer.
        assert started <= {"frameiod-spool-read_0"}

    async def test_a_missing_spool_is_an_error_and_is_not_created(self, path: Path):
        with pytest.raises(QueueError, match="no spool at"):
            await Spool.open(path, role="operator")
        assert not await asyncio.to_thread(path.exists)

    async def test_the_daemons_operations_are_refused(self, spool: Spool, path: Path):
        operator = await Spool.open(path, role="operator")
        try:
            with pytest.raises(SpoolError, match="operator"):
                await operator.accept(incoming(), ["h"])
        finally:
            await operator.close()
        assert event_ids(path) == set()


class TestPurgeDone:
    async def test_coalesced_requests_are_forgotten_only_once_out_of_the_window(
        self, spool: Spool, path: Path
    ):
        now = time.time()
        original = incoming(received_at=now - 3600, timestamp=int(now) - 500)
        await spool.accept(original, ["a"])
        late, early = (
            incoming(original.body, timestamp=int(now) - age, received_at=now - 3600)
            for age in (200, 400)
        )
        for twin in (late, early):
            assert await spool.accept(twin, ["a"]) == Accepted(original.id, True, 0)
        [claimed] = await spool.claim(1, {"a": 1})
        await spool.finish(claimed.delivery_id, outcome="ok", seconds=0.1, error=None)

        # The event itself goes (signed 500 s ago); the request signed 200 s ago stays.
        assert await spool.purge_done(older_than=600, replay_window=300) == 1

        assert event_ids(path) == set()
        replay = incoming(original.body, timestamp=late.timestamp, signature=late.signature)
        assert await spool.accept(replay, ["a"]) == Accepted(original.id, True, 0)
        replay = incoming(original.body, timestamp=early.timestamp, signature=early.signature)
        assert await spool.accept(replay, ["a"]) == Accepted(replay.id, False, 1)
        assert query(path, "SELECT timestamp, signature FROM seen_requests") == [
            (late.timestamp, late.signature)
        ]

    async def test_only_old_events_that_are_finished_are_deleted(self, spool: Spool, path: Path):
        old = time.time() - 3600
        done, empty, waiting, dead, mixed = (incoming(received_at=old) for _ in range(5))
        young = incoming()
        for event in (done, waiting, dead, mixed, young):
            await spool.accept(event, ["a", "b"])
        await spool.accept(empty, [])
        for claimed in await spool.claim(100, {"a": 100, "b": 100}):
            if claimed.event_id == waiting.id:
                continue
            dies = claimed.event_id == dead.id or (
                claimed.event_id == mixed.id and claimed.handler == "b"
            )
            outcome = "error" if dies else "ok"
            await spool.finish(
                claimed.delivery_id, outcome=outcome, seconds=0.1, error=None, dead=dies
            )

        assert await spool.purge_done(older_than=600) == 2
        assert event_ids(path) == {waiting.id, dead.id, mixed.id, young.id}
        assert query(path, "SELECT COUNT(*) FROM deliveries WHERE event_id = ?", done.id) == [(0,)]
        assert states(path, mixed.id) == {"a": "done", "b": "dead"}
        assert states(path, young.id) == {"a": "done", "b": "done"}


class TestGauges:
    async def test_counting_never_waits_for_the_writer(self, spool: Spool):
        # Counting reads every delivery kept; on the writer, each 202 would wait for it.
        await spool.accept(incoming(), ["a"])
        async with writer_held(spool):
            counts, _ = await asyncio.wait_for(spool.gauges(), 5)
        assert counts["pending"] == 1


class TestFullDisk:
    @staticmethod
    async def _limit_pages(spool: Spool, extra: int) -> None:
        def limit(conn: sqlite3.Connection) -> None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages + extra}")

        await spool.run(limit)

    async def test_only_what_was_committed_is_reported_accepted_in_a_batch_that_fills_up(
        self, spool: Spool, path: Path
    ):
        await self._limit_pages(spool, 6)
        events = [incoming(os.urandom(3000 if n % 2 else 100)) for n in range(40)]
        async with writer_held(spool):
            pending = asyncio.gather(
                *(spool.accept(event, ["a"]) for event in events), return_exceptions=True
            )
        results = await pending

        committed = event_ids(path)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed, "the batch should have filled the spool"
        assert {r.reason for r in failed if isinstance(r, SpoolUnavailable)} == {"spool_full"}
        assert len(failed) < len(events), "some of the batch should have fitted"
        for event, result in zip(events, results, strict=True):
            reported = isinstance(result, Accepted)
            assert reported == (event.id in committed), (event.id, result)
        # Every delivery row belongs to a committed event, and every committed event has one.
        assert query(path, "SELECT COUNT(*) FROM deliveries") == [(len(committed),)]


class TestClose:
    async def test_operations_queued_before_close_finish(self, path: Path):
        spool = await Spool.open(path)
        event = incoming()
        queued = asyncio.ensure_future(spool.accept(event, ["a"]))
        await asyncio.sleep(0)  # let the task submit its operation
        await spool.close()
        assert (await queued).id == event.id
        assert event_ids(path) == {event.id}

    async def test_after_close_every_operation_is_refused(self, path: Path):
        spool = await Spool.open(path)
        await spool.close()
        attempts = [
            spool.accept(incoming(), ["a"]),
            spool.claim(1, {"a": 1}),
            spool.gauges(),
            spool.run(lambda c: c.execute("SELECT 1").fetchone()),
        ]
        for attempt in attempts:
            with pytest.raises(SpoolUnavailable, match="closed") as caught:
                async with asyncio.timeout(5):  # a refusal, not an operation lost forever
                    await attempt
            assert caught.value.reason == "spool_closed"
        assert event_ids(path) == set()
        await spool.close()  # closing twice is harmless


class TestClaimsOnRecord:
    async def test_a_claim_returns_only_once_its_mark_is_committed(self, spool: Spool, path: Path):
        now = time.time()
        first, second = incoming(received_at=now - 2), incoming(received_at=now - 1)
        await spool.accept(first, ["h"])
        await spool.accept(second, ["h"])
        # Hold the writer: nothing can be committed yet.
        gate = threading.Event()
        held = spool.run(lambda conn: gate.wait(10))
        claim = asyncio.ensure_future(spool.claim(5, {"h": 5}, now=now))
        try:
            done, _ = await asyncio.wait([claim], timeout=0.3)
            assert not done, "a claim returned before its mark was committed"
        finally:
            gate.set()
        await held
        one, two = await claim
        assert (one.event_id, two.event_id) == (first.id, second.id)
        assert query(path, "SELECT state, attempts FROM deliveries ORDER BY id") == [
            ("running", 1),
            ("running", 1),
        ]
        assert await spool.confirm(one)
        assert await spool.claim(5, {"h": 5}, now=now) == []
        assert await spool.next_due(["h"]) is None
        await spool.finish(
            one.delivery_id, outcome="error", seconds=0.1, error="x", next_attempt_at=now - 1
        )
        # Its outcome written, the first is due again, and claimable.
        assert await spool.next_due(["h"]) == pytest.approx(now - 1)
        [again] = await spool.claim(5, {"h": 5}, now=now)
        assert (again.event_id, again.attempts) == (first.id, 2)


class TestCheckpoints:
    async def test_the_wal_is_copied_into_the_file_beside_the_writer_not_inside_a_commit(
        self, path: Path
    ):
        spool = await Spool.open(path)
        try:
            await spool.run(lambda conn: None)
            before = await asyncio.to_thread(lambda: path.stat().st_size)
            for number in range(40):  # far fewer pages than the writer's own checkpoint needs
                body = json.dumps({"type": "file.ready", "pad": "x" * 2000, "n": number})
                await spool.accept(incoming(body.encode()), ["h"])
            await asyncio.to_thread(
                wait_until, lambda: path.stat().st_size >= before + 40 * 2000, 5.0
            )
            threads = {t.name for t in threading.enumerate()}
            assert "frameiod-spool-checkpoint" in threads
        finally:
            await spool.close()
        assert "frameiod-spool-checkpoint" not in {t.name for t in threading.enumerate()}
