"""The store's contract, held against both backends: a real SQLite file and a real
``redis-server``. Every test here runs once per backend, and the same assertions must hold
on both; what only one backend promises (SQLite's file, schema and group commit; Redis's
leases across receivers and its keys) is tested in that backend's own files.

Stores are opened in one place, `Backend.open`, from the ``[spool]`` table a daemon reads;
the operator's queue operations are driven through ``frameiod queue`` as a subprocess, the
interface that stays while the Python API behind it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from redis_support import RedisServer
from support import SECRET, assert_hostile_text_escaped, incoming, run_cli

from frameiod.config import load_config
from frameiod.store.base import Accepted, Claimed, Incoming, SpoolBackend, SpoolUnavailable
from frameiod.store.open import open_backend

BACKENDS = ["sqlite", "redis"]
DAY = 86400.0
LOG, NOTIFY = "log:write", "notify:post"
# Past every lease a claim takes (handler timeout plus grace) and every retry scheduled here.
LATER = 3600.0 * 24

# What ``frameiod queue list --json`` and ``show --json`` give, whichever backend.
LIST_KEYS = {
    "id",
    "event_id",
    "type",
    "source",
    "handler",
    "state",
    "attempts",
    "next_attempt_at",
    "last_outcome",
    "last_error",
    "received_at",
}
SHOW_KEYS = {"id", "source", "type", "timestamp", "received_at", "payload", "deliveries"}
DELIVERY_KEYS = {
    "id",
    "handler",
    "state",
    "attempts",
    "next_attempt_at",
    "last_outcome",
    "last_error",
    "last_seconds",
    "updated_at",
}


async def open_store(config: Path) -> SpoolBackend:
    """Open the store that ``config``'s ``[spool]`` names, as the daemon does: the one place
    stores are opened (the crashing process of `TestReleaseAndRecovery` uses it too)."""
    return (await open_backend(load_config(config, environ={}))).spool


@dataclass
class Backend:
    """One backend's store for one test: its config on disk (which ``frameiod queue`` reads
    too), and ways to look at what it keeps the way an operator would."""

    kind: str
    directory: Path
    server: RedisServer | None = None
    prefix: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:12]}")
    opened: list[SpoolBackend] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "sqlite":
            spool = f'path = "{self.directory / "frameiod.db"}"'
        else:
            assert self.server is not None
            spool = (
                f'backend = "redis"\nredis_url = "{self.server.url}"\n'
                f'stream_prefix = "{self.prefix}"'
            )
        self.config = self.directory / "config.toml"
        self.config.write_text(
            f'[log]\nformat = "json"\n\n[sources.default]\nsecrets = ["{SECRET}"]\n'
            f'tolerance = "5m"\n\n[spool]\n{spool}\n'
        )

    async def open(self) -> SpoolBackend:
        """Open this backend's store (closed after the test)."""
        store = await open_store(self.config)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        """Close every store `open` gave (closing one twice is harmless)."""
        for store in self.opened:
            await store.close()

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``frameiod queue ARGS --config <this config>``."""
        return run_cli("queue", *args, "--config", str(self.config))

    def json(self, *args: str) -> Any:
        """``frameiod queue ARGS --json``, parsed; it must succeed."""
        return _json(self.queue(*args, "--json"))

    def event_ids(self) -> set[str]:
        """The events the store keeps, read past the store's own code."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.directory / "frameiod.db")) as db:
                return {row[0] for row in db.execute("SELECT id FROM events")}
        with self._redis() as client:
            return set(client.zrange(f"{self.prefix}:events", 0, -1))

    def dead_letters(self) -> list[tuple[str, str]]:
        """(event id, handler) of every dead letter kept, sorted, read past the store."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.directory / "frameiod.db")) as db:
                rows = db.execute("SELECT event_id, handler FROM deliveries WHERE state = 'dead'")
                return sorted(rows)
        with self._redis() as client:
            entries = client.xrange(f"{self.prefix}:dead")
        return sorted((fields["event_id"], fields["handler"]) for _, fields in entries)

    def let_leases_lapse(self) -> None:
        """Make every claim look abandoned long ago, as if its receiver had died: stream
        entries a receiver read are taken over only once Redis's own clock says they have
        been idle past every lease, which ``claim(now=...)`` cannot move. (SQLite: nothing
        to do; a claim's time is the caller's.)"""
        if self.kind == "sqlite":
            return
        with self._redis() as client:
            for stream in client.scan_iter(f"{self.prefix}:stream:*"):
                for entry in client.xpending_range(stream, "frameiod", "-", "+", 1000):
                    client.xclaim(
                        stream, "frameiod", entry["consumer"], 0, [entry["message_id"]],
                        idle=int(LATER * 1000),
                    )  # fmt: skip

    def _redis(self) -> redis.Redis:
        assert self.server is not None
        return redis.Redis.from_url(self.server.url, decode_responses=True)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend in turn: SQLite in a file of this test's own, Redis on the module's
    server under a key prefix of this test's own."""
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    made = Backend(request.param, tmp_path / "store", server)
    yield made
    await made.close_all()


@pytest.fixture
async def store(backend: Backend) -> SpoolBackend:
    """An open store of each backend."""
    return await backend.open()


def counts(pending: int = 0, running: int = 0, done: int = 0, dead: int = 0) -> dict[str, int]:
    return {"pending": pending, "running": running, "done": done, "dead": dead}


async def states(store: SpoolBackend, event_id: str) -> dict[str, tuple[str, int]]:
    """handler → (state, attempts) of one event's deliveries."""
    return {r["handler"]: (r["state"], r["attempts"]) for r in await store.deliveries_of(event_id)}


def keys(claimed: list[Claimed]) -> list[tuple[str, str, int]]:
    return [(item.event_id, item.handler, item.attempts) for item in claimed]


async def finish_ok(store: SpoolBackend, item: Claimed, seconds: float = 0.25) -> None:
    await store.finish(item.delivery_id, outcome="ok", seconds=seconds, error=None)


async def claim_confirmed(
    store: SpoolBackend, limit: int, caps: dict[str, int], now: float | None = None
) -> list[Claimed]:
    """Claim as the dispatcher does: each claim confirmed on record before it is used."""
    claimed = await store.claim(limit, caps, now=now)
    for item in claimed:
        assert await store.confirm(item), item
    return claimed


class TestAccept:
    async def test_an_event_gets_one_pending_delivery_per_handler(
        self, store: SpoolBackend, backend: Backend
    ):
        event = incoming()
        accepted = await store.accept(event, ["log:write", "notify:post"])
        assert accepted == Accepted(event.id, duplicate=False, deliveries=2)
        assert backend.event_ids() == {event.id}
        rows = await store.deliveries_of(event.id)
        assert [
            {k: row[k] for k in ("handler", "state", "attempts", "last_outcome", "last_error")}
            for row in rows
        ] == [
            {"handler": h, "state": "pending", "attempts": 0, "last_outcome": None,
             "last_error": None}
            for h in ("log:write", "notify:post")
        ]  # fmt: skip
        assert await store.gauges(now=event.received_at) == (counts(pending=2), 0.0)

    async def test_an_event_no_handler_wants_is_kept_without_deliveries(
        self, store: SpoolBackend, backend: Backend
    ):
        event = incoming()
        assert await store.accept(event, []) == Accepted(event.id, duplicate=False, deliveries=0)
        assert backend.event_ids() == {event.id}
        assert await store.deliveries_of(event.id) == []
        assert (await store.gauges())[0] == counts()
        # Kept all the same: the same request again is recognised.
        again = incoming(event.body, signature=event.signature, timestamp=event.timestamp)
        assert await store.accept(again, []) == Accepted(event.id, True, 0)

    async def test_everything_accepted_is_still_there_after_reopening(self, backend: Backend):
        events = [incoming(), incoming()]
        store = await backend.open()
        await store.accept(events[0], ["a", "b"])
        await store.accept(events[1], [])
        await store.close()

        store = await backend.open()
        assert store.recovered == 0
        assert await states(store, events[0].id) == {"a": ("pending", 0), "b": ("pending", 0)}
        assert backend.event_ids() == {events[0].id, events[1].id}
        assert keys(await claim_confirmed(store, 10, {"a": 5, "b": 5})) == [
            (events[0].id, "a", 1),
            (events[0].id, "b", 1),
        ]

    async def test_listeners_hear_of_new_deliveries_only(self, store: SpoolBackend):
        heard: list[str] = []
        store.on_new_work(lambda: heard.append("work"))
        first = incoming()
        await store.accept(first, ["a"])
        resent = incoming(first.body, signature=first.signature, timestamp=first.timestamp)
        await store.accept(resent, ["a"])  # a duplicate: nothing new to do
        await store.accept(incoming(), [])
        assert heard == ["work"]


class TestDuplicates:
    async def test_the_same_signed_request_again_is_the_original_event(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        await claim_confirmed(store, 1, {"a": 1})  # even once it has started
        # Another body: only the (source, timestamp, signature) check can match.
        again = incoming(signature=original.signature, timestamp=original.timestamp)
        assert await store.accept(again, ["a"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert await states(store, original.id) == {"a": ("running", 1)}
        assert (await store.gauges())[0] == counts(running=1)

    async def test_the_same_signature_from_another_source_is_a_new_event(self, store: SpoolBackend):
        original = incoming()
        await store.accept(original, ["a"])
        other = incoming(source="elsewhere", timestamp=original.timestamp,
                         signature=original.signature)  # fmt: skip
        assert await store.accept(other, ["a"]) == Accepted(other.id, False, 1)

    async def test_a_retried_request_is_its_own_event_even_when_a_newer_copy_waits(
        self, store: SpoolBackend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        await claim_confirmed(store, 1, {"a": 1})
        copy = incoming(original.body)  # started original: the copy is an event of its own
        assert await store.accept(copy, ["a"]) == Accepted(copy.id, False, 1)
        retry = incoming(original.body, signature=original.signature, timestamp=original.timestamp)
        assert await store.accept(retry, ["a"]) == Accepted(original.id, True, 0)

    async def test_an_identical_body_waiting_for_all_handlers_is_coalesced(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a", "b"])
        again = incoming(original.body, timestamp=original.timestamp + 5)
        assert await store.accept(again, ["a", "b"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert (await store.gauges())[0] == counts(pending=2)

    async def test_a_coalesced_request_again_is_a_duplicate_once_its_event_has_run(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        twin = incoming(original.body, timestamp=original.timestamp + 5)
        assert await store.accept(twin, ["a"]) == Accepted(original.id, True, 0)
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        await finish_ok(store, claimed)

        replay = incoming(original.body, timestamp=twin.timestamp, signature=twin.signature)
        assert await store.accept(replay, ["a"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert await states(store, original.id) == {"a": ("done", 1)}

    @pytest.mark.parametrize("progress", ["running", "done", "retry"])
    async def test_an_identical_body_is_a_new_event_once_a_delivery_has_started(
        self, store: SpoolBackend, backend: Backend, progress: str
    ):
        original = incoming()
        await store.accept(original, ["a", "b"])
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        if progress == "done":
            await finish_ok(store, claimed)
        if progress == "retry":  # failed once, pending again: its run has begun all the same
            await store.finish(
                claimed.delivery_id, outcome="error", seconds=0.1, error="boom", next_attempt_at=0
            )
        expected = "pending" if progress == "retry" else progress
        assert await states(store, original.id) == {"a": (expected, 1), "b": ("pending", 0)}

        again = incoming(original.body)
        assert await store.accept(again, ["a", "b"]) == Accepted(again.id, False, 2)
        assert backend.event_ids() == {original.id, again.id}

    @pytest.mark.parametrize(
        "change", [{"secret_id": "1"}, {"source": "other"}], ids=["secret", "source"]
    )
    async def test_an_identical_body_signed_elsewhere_is_a_new_event(
        self, store: SpoolBackend, backend: Backend, change: dict[str, str]
    ):
        original = incoming()
        await store.accept(original, ["a"])
        again = incoming(original.body, **change)
        assert await store.accept(again, ["a"]) == Accepted(again.id, False, 1)
        assert backend.event_ids() == {original.id, again.id}

    async def test_an_identical_body_of_an_event_without_deliveries_is_a_new_event(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, [])
        again = incoming(original.body)
        assert await store.accept(again, ["a"]) == Accepted(again.id, False, 1)
        assert backend.event_ids() == {original.id, again.id}


class TestClaim:
    async def test_due_deliveries_are_claimed_oldest_first_and_marked_running(
        self, store: SpoolBackend
    ):
        now = time.time()
        newest = incoming(received_at=now - 10)
        oldest = incoming(received_at=now - 30)
        middle = incoming(received_at=now - 20)
        for event in (newest, oldest):
            await store.accept(event, ["h"])
        await store.accept(middle, ["h", "g"])

        claimed = await claim_confirmed(store, 10, {"h": 10, "g": 10}, now=now)
        assert [c.event_id for c in claimed] == [oldest.id, middle.id, middle.id, newest.id]
        assert {c.handler for c in claimed[1:3]} == {"h", "g"}
        first = claimed[0]
        assert (first.event_id, first.handler, first.attempts, first.source, first.body,
                first.timestamp, first.received_at) == (
            oldest.id, "h", 1, "default", oldest.body, oldest.timestamp, oldest.received_at
        )  # fmt: skip
        assert (await store.gauges(now=now))[0] == counts(running=4)
        for event in (newest, oldest):
            assert await states(store, event.id) == {"h": ("running", 1)}
        assert await store.claim(10, {"h": 10, "g": 10}, now=now) == [], "all are running"
        assert await store.next_due(["h"]) is None or await store.next_due(["h"]) > now

    async def test_a_delivery_scheduled_later_is_claimed_only_once_due(self, store: SpoolBackend):
        now = time.time()
        event = incoming(received_at=now - 5)
        await store.accept(event, ["h"])
        [first] = await claim_confirmed(store, 1, {"h": 1}, now=now)
        await store.finish(
            first.delivery_id, outcome="error", seconds=0.5, error="boom", next_attempt_at=now + 60
        )
        assert await store.next_due(["h"]) == pytest.approx(now + 60, abs=1e-3)
        assert await store.claim(1, {"h": 1}, now=now + 59) == []
        [second] = await claim_confirmed(store, 1, {"h": 1}, now=now + 60)
        assert keys([second]) == [(event.id, "h", 2)]

    async def test_caps_limit_each_handler_and_skip_the_absent_ones(self, store: SpoolBackend):
        now = time.time()
        for age in range(5):
            await store.accept(incoming(received_at=now - 100 + age), ["busy", "free", "off"])

        claimed = await claim_confirmed(store, 10, {"busy": 1, "free": 3}, now=now)
        assert sorted(c.handler for c in claimed) == ["busy", "free", "free", "free"]
        assert (await store.gauges(now=now))[0] == counts(pending=11, running=4)
        assert await store.claim(10, {}, now=now) == []

    @pytest.mark.parametrize("room", [0, -1])
    async def test_a_handler_without_room_gets_nothing(self, store: SpoolBackend, room: int):
        now = time.time()
        for age in range(3):
            await store.accept(incoming(received_at=now - 100 + age), ["full", "free"])
        claimed = await store.claim(10, {"full": room, "free": 1}, now=now)
        assert [c.handler for c in claimed] == ["free"]

    async def test_no_more_than_limit_are_claimed(self, store: SpoolBackend):
        now = time.time()
        events = [incoming(received_at=now - 100 + age) for age in range(5)]
        for event in events:
            await store.accept(event, ["h"])
        assert keys(await claim_confirmed(store, 2, {"h": 10}, now=now)) == [
            (events[0].id, "h", 1),
            (events[1].id, "h", 1),
        ]
        assert await store.claim(0, {"h": 10}, now=now) == []
        assert (await store.gauges(now=now))[0] == counts(pending=3, running=2)

    async def test_the_oldest_across_handlers_goes_first_not_the_first_handlers(
        self, store: SpoolBackend
    ):
        now = time.time()
        events = [incoming(received_at=now - 10 + i) for i in range(3)]
        for event in events:
            await store.accept(event, ["x", "y"])
        assert keys(await claim_confirmed(store, 10, {"y": 2, "x": 0}, now=now)) == [
            (events[0].id, "y", 1),
            (events[1].id, "y", 1),
        ]
        assert keys(await claim_confirmed(store, 2, {"y": 5, "x": 5}, now=now)) == [
            (events[0].id, "x", 1),
            (events[1].id, "x", 1),
        ]
        assert sorted(keys(await claim_confirmed(store, 10, {"y": 5, "x": 5}, now=now))) == sorted(
            [(events[2].id, "x", 1), (events[2].id, "y", 1)]
        )
        assert (await store.gauges(now=now))[0] == counts(running=6)

    async def test_a_backlog_of_a_capped_handler_does_not_hide_other_handlers(
        self, store: SpoolBackend
    ):
        now = time.time()
        for age in range(8):
            await store.accept(incoming(received_at=now - 100 + age), ["slow"])
        await store.accept(incoming(received_at=now - 50), ["fast"])

        claimed = await store.claim(2, {"slow": 1, "fast": 1}, now=now)
        assert sorted(c.handler for c in claimed) == ["fast", "slow"]

    async def test_next_due_is_the_earliest_pending_time_of_the_given_handlers(
        self, store: SpoolBackend
    ):
        now = time.time()
        await store.accept(incoming(received_at=now - 5), ["a"])
        await store.accept(incoming(received_at=now - 9), ["b"])
        assert await store.next_due(["a"]) == pytest.approx(now - 5, abs=1e-3)
        assert await store.next_due(["a", "b"]) == pytest.approx(now - 9, abs=1e-3)
        assert await store.next_due(["c"]) is None
        assert await store.next_due([]) is None


class TestFinish:
    async def _claimed(
        self, store: SpoolBackend, handlers: list[str]
    ) -> tuple[str, dict[str, Any]]:
        event = incoming()
        await store.accept(event, handlers)
        claimed = await claim_confirmed(store, len(handlers), dict.fromkeys(handlers, 1))
        return event.id, {c.handler: c.delivery_id for c in claimed}

    async def test_success_error_and_dead_end_in_their_states(self, store: SpoolBackend):
        # The daemon says which handlers it runs: the oldest due is looked for among them.
        store.expect_handlers({"ok": 30.0, "retry": 30.0, "dead": 30.0})
        event_id, ids = await self._claimed(store, ["ok", "retry", "dead"])
        later = time.time() + 300
        await store.finish(ids["ok"], outcome="ok", seconds=0.25, error=None)
        await store.finish(
            ids["retry"],
            outcome="timeout",
            seconds=30.0,
            error="TimeoutError: gave up after 30s",
            next_attempt_at=later,
        )
        await store.finish(
            ids["dead"], outcome="error", seconds=1.5, error="ValueError: bad", dead=True
        )
        rows = {row["handler"]: row for row in await store.deliveries_of(event_id)}
        fields = ("state", "attempts", "last_outcome", "last_error", "last_seconds")
        assert {h: tuple(row[f] for f in fields) for h, row in rows.items()} == {
            "ok": ("done", 1, "ok", None, 0.25),
            "retry": ("pending", 1, "timeout", "TimeoutError: gave up after 30s", 30.0),
            "dead": ("dead", 1, "error", "ValueError: bad", 1.5),
        }
        assert await store.next_due(["ok", "retry", "dead"]) == pytest.approx(later, abs=1e-3)
        assert await store.gauges(now=later - 1) == (counts(pending=1, done=1, dead=1), 0.0)
        assert await store.gauges(now=later + 3) == (
            counts(pending=1, done=1, dead=1),
            pytest.approx(3.0, abs=1e-3),
        )
        # Done and dead are final: nothing of them is claimed again, however late.
        assert keys(await claim_confirmed(store, 10, dict.fromkeys(rows, 5), now=later)) == [
            (event_id, "retry", 2)
        ]
        assert await store.claim(10, {"ok": 5, "dead": 5}, now=later + LATER) == []

    async def test_a_very_long_error_is_truncated(self, store: SpoolBackend):
        event_id, ids = await self._claimed(store, ["h"])
        error = "RuntimeError: " + "x" * 10_000
        await store.finish(ids["h"], outcome="error", seconds=1.0, error=error, dead=True)
        [row] = await store.deliveries_of(event_id)
        assert row["last_error"] == error[:2000]

    async def test_a_retry_wakes_the_listeners_and_an_end_does_not(self, store: SpoolBackend):
        _, ids = await self._claimed(store, ["ok", "dead", "retry"])
        heard: list[str] = []
        store.on_new_work(lambda: heard.append("work"))
        await store.finish(ids["ok"], outcome="ok", seconds=1.0, error=None)
        await store.finish(ids["dead"], outcome="error", seconds=1.0, error="e", dead=True)
        assert heard == []
        await store.finish(
            ids["retry"], outcome="error", seconds=1.0, error="e", next_attempt_at=time.time()
        )
        assert heard == ["work"]


class TestReleaseAndRecovery:
    async def test_release_puts_only_running_deliveries_back_due_now(self, store: SpoolBackend):
        event = incoming()
        await store.accept(event, ["a", "b"])
        claimed = {c.handler: c for c in await claim_confirmed(store, 2, {"a": 1, "b": 1})}
        await finish_ok(store, claimed["b"])
        await store.release(c.delivery_id for c in claimed.values())  # only "a" still runs
        assert await states(store, event.id) == {"a": ("pending", 1), "b": ("done", 1)}
        assert (await store.gauges())[0] == counts(pending=1, done=1)
        assert await store.next_due(["a"]) == pytest.approx(time.time(), abs=30)
        [again] = await claim_confirmed(store, 1, {"a": 1})
        assert keys([again]) == [(event.id, "a", 2)], "the call cut short counts as an attempt"

    async def test_a_delivery_running_when_its_process_was_killed_runs_again(
        self, backend: Backend
    ):
        crashed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _CRASHING, str(backend.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        event_id = crashed.stdout.strip()

        store = await backend.open()
        store.expect_handlers({"a": 1.0, "b": 1.0})
        if backend.kind == "sqlite":
            # One process owns the file: what was running is pending again at open.
            assert store.recovered == 1
            assert await states(store, event_id) == {"a": ("pending", 1), "b": ("pending", 0)}
        else:
            # Shared by receivers: it stays running until its lease runs out.
            assert await states(store, event_id) == {"a": ("running", 1), "b": ("pending", 0)}
        # Then any receiver runs it again (claimed here past every lease).
        again = await claim_confirmed(store, 5, {"a": 1, "b": 1}, now=time.time() + LATER)
        assert sorted(keys(again)) == [(event_id, "a", 2), (event_id, "b", 1)], (
            "the interrupted call counts as an attempt"
        )
        assert (await store.gauges())[0] == counts(running=2)


# A process that accepts an event, starts its first delivery (on record), then is killed.
_CRASHING = """
import asyncio, os, signal, sys
from pathlib import Path

from support import incoming
from test_store_contract import open_store


async def main() -> None:
    store = await open_store(Path(sys.argv[1]))
    event = incoming()
    await store.accept(event, ["a", "b"])
    [item] = await store.claim(1, {"a": 1})
    assert await store.confirm(item)
    print(event.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


asyncio.run(main())
"""


class TestPurgeDone:
    async def test_only_events_whose_deliveries_are_all_done_are_deleted(
        self, store: SpoolBackend, backend: Backend
    ):
        old = time.time() - 3600
        done, empty, waiting, dead, mixed = (incoming(received_at=old) for _ in range(5))
        for event in (done, waiting, dead, mixed):
            await store.accept(event, ["a", "b"])
        await store.accept(empty, [])
        for claimed in await claim_confirmed(store, 100, {"a": 100, "b": 100}):
            if claimed.event_id == waiting.id and claimed.handler == "b":
                await store.release([claimed.delivery_id])
                continue
            dies = claimed.event_id == dead.id or (
                claimed.event_id == mixed.id and claimed.handler == "b"
            )
            await store.finish(
                claimed.delivery_id,
                outcome="error" if dies else "ok",
                seconds=0.1,
                error="e" if dies else None,
                dead=dies,
            )
        # Received an hour ago: a day's retention keeps them all.
        assert await store.purge_done(older_than=DAY) == 0
        assert backend.event_ids() == {e.id for e in (done, empty, waiting, dead, mixed)}

        assert await store.purge_done(older_than=0) == 2
        assert backend.event_ids() == {waiting.id, dead.id, mixed.id}
        assert await store.deliveries_of(done.id) == []
        assert await states(store, mixed.id) == {"a": ("done", 1), "b": ("dead", 1)}
        assert await states(store, waiting.id) == {"a": ("done", 1), "b": ("pending", 1)}
        assert (await store.gauges())[0] == counts(pending=1, done=2, dead=3)

        [last] = await claim_confirmed(store, 10, {"b": 1})
        await finish_ok(store, last)
        assert await store.purge_done(older_than=0) == 1
        assert backend.event_ids() == {dead.id, mixed.id}

    async def test_retention_counts_from_when_an_event_was_received_not_when_it_settled(
        self, store: SpoolBackend, backend: Backend
    ):
        now = time.time()
        old, young = incoming(received_at=now - 7200), incoming(received_at=now - 600)
        # Settled by the purge of its dead letter, not by a delivery ending.
        buried = incoming(received_at=now - 7200)
        for event in (old, young, buried):
            await store.accept(event, ["a", "b"])
        for claimed in await claim_confirmed(store, 10, {"a": 10, "b": 10}):
            dies = claimed.event_id == buried.id and claimed.handler == "b"
            await store.finish(
                claimed.delivery_id,
                outcome="error" if dies else "ok",
                seconds=0.1,
                error="e" if dies else None,
                dead=dies,
            )
        assert await store.purge_dead(older_than=0) == 1

        # All three settled just now: an hour's retention takes the two received before it.
        assert await store.purge_done(older_than=3600) == 2
        assert backend.event_ids() == {young.id}
        assert await store.purge_done(older_than=3600) == 0

    async def test_a_request_signed_inside_the_replay_window_is_a_duplicate_after_purge(
        self, store: SpoolBackend, backend: Backend
    ):
        now = time.time()
        # Both received and finished long ago; one was signed inside the window.
        late = incoming(received_at=now - 3600, timestamp=int(now) - 200)
        early = incoming(received_at=now - 3600, timestamp=int(now) - 400)
        for event in (late, early):
            await store.accept(event, [])

        purged = await store.purge_done(older_than=0, replay_window=300)

        kept = backend.event_ids()
        assert early.id not in kept
        assert purged == len({late.id, early.id} - kept)
        replay = incoming(late.body, signature=late.signature, timestamp=late.timestamp)
        assert await store.accept(replay, []) == Accepted(late.id, True, 0)
        replay = incoming(early.body, signature=early.signature, timestamp=early.timestamp)
        assert await store.accept(replay, []) == Accepted(replay.id, False, 0)

    async def test_coalesced_requests_are_forgotten_only_once_out_of_the_window(
        self, store: SpoolBackend, backend: Backend
    ):
        now = time.time()
        original = incoming(received_at=now - 3600, timestamp=int(now) - 500)
        await store.accept(original, ["a"])
        late, early = (
            incoming(original.body, timestamp=int(now) - age, received_at=now - 3600)
            for age in (200, 400)
        )
        for twin in (late, early):
            assert await store.accept(twin, ["a"]) == Accepted(original.id, True, 0)
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        await finish_ok(store, claimed)

        # The event itself goes (signed 500 s ago); the request signed 200 s ago stays.
        assert await store.purge_done(older_than=0, replay_window=300) == 1

        assert backend.event_ids() == set()
        replay = incoming(original.body, timestamp=late.timestamp, signature=late.signature)
        assert await store.accept(replay, ["a"]) == Accepted(original.id, True, 0)
        replay = incoming(original.body, timestamp=early.timestamp, signature=early.signature)
        assert await store.accept(replay, ["a"]) == Accepted(replay.id, False, 1)


class TestGauges:
    async def test_counts_per_state_and_the_age_of_the_oldest_due_pending(
        self, store: SpoolBackend
    ):
        store.expect_handlers({"a": 30.0, "b": 30.0, "c": 30.0})
        now = time.time()
        assert await store.gauges(now=now) == (counts(), 0.0)
        await store.accept(incoming(received_at=now + 30), ["a"])
        # Pending, but not due yet: nobody is late.
        assert await store.gauges(now=now) == (counts(pending=1), 0.0)
        await store.accept(incoming(received_at=now - 40), ["a", "b", "c"])
        await store.accept(incoming(received_at=now - 25), ["a"])
        assert (await store.gauges(now=now))[0] == counts(pending=5)
        claimed = await claim_confirmed(store, 3, {"a": 1, "b": 1, "c": 1}, now=now)
        by_handler = {c.handler: c.delivery_id for c in claimed}
        await store.finish(by_handler["b"], outcome="ok", seconds=0.1, error=None)
        await store.finish(by_handler["c"], outcome="error", seconds=0.1, error="e", dead=True)

        stored, oldest = await store.gauges(now=now)
        assert stored == counts(pending=2, running=1, done=1, dead=1)
        assert oldest == pytest.approx(25.0, abs=0.01)

    async def test_deliveries_nobody_has_claimed_yet_count_as_waiting(self, store: SpoolBackend):
        store.expect_handlers({"h": 30.0})
        await store.accept(incoming(), ["h"])
        later = time.time() + 100
        stored, age = await store.gauges(now=later)
        assert stored == counts(pending=1)
        assert 99 <= age <= 101
        [item] = await claim_confirmed(store, 10, {"h": 10})
        await finish_ok(store, item)
        assert await store.gauges(now=later) == (counts(done=1), 0.0)

    async def test_an_event_without_deliveries_is_not_waiting(self, store: SpoolBackend):
        store.expect_handlers({"h": 30.0})
        await store.accept(incoming(), [])
        assert await store.gauges(now=time.time() + 100) == (counts(), 0.0)


class TestCheckAndClose:
    async def test_a_store_that_takes_writes_passes_the_check(self, store: SpoolBackend):
        assert await store.check() is None
        assert store.describe()

    async def test_after_close_every_operation_is_refused(
        self, backend: Backend, store: SpoolBackend
    ):
        await store.accept(incoming(), ["a"])
        await store.close()
        for attempt in (
            lambda: store.accept(incoming(), ["a"]),
            lambda: store.claim(1, {"a": 1}),
            store.gauges,
            store.check,
        ):
            with pytest.raises(SpoolUnavailable) as refused:
                async with asyncio.timeout(5):  # a refusal, not an operation lost forever
                    await attempt()
            assert refused.value.reason == "spool_closed"
        assert len(backend.event_ids()) == 1
        await store.close()  # closing twice is harmless


class TestHostileText:
    async def test_a_type_and_an_error_from_outside_are_shown_escaped(
        self, backend: Backend, store: SpoolBackend
    ):
        await assert_hostile_text_escaped(store, backend.config)


# The faults, made for real. Each stands for one way a store stops taking writes.


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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


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


# ``frameiod queue``: the operator's operations, through the command as a user runs it.


@dataclass(frozen=True)
class Filled:
    """A store with something in every interesting state, and where to find it.

    - ``old``: received 8 days ago; LOG done, NOTIFY dead since 8 days (an old dead letter).
    - ``waiting``: received 2 minutes ago; LOG pending and due (the oldest due pending),
      accepted after the last claim.
    - ``mixed``: received 90 s ago; LOG failed once, pending again in an hour; NOTIFY dead
      just now.
    - ``dead``: received 1 minute ago; NOTIFY dead just now (a young dead letter).
    - ``later``: received 30 s ago; LOG failed once, pending again in an hour.
    """

    backend: Backend
    describe: str
    old: Incoming
    waiting: Incoming
    mixed: Incoming
    dead: Incoming
    later: Incoming

    async def deliveries(self, event: Incoming) -> dict[str, tuple[str, int]]:
        """handler → (state, attempts) of one event, as the store itself reports them."""
        store = await self.backend.open()
        try:
            return await states(store, event.id)
        finally:
            await store.close()

    async def claim(self, *handlers: str, at: float | None = None) -> list[tuple[str, str, int]]:
        """Claim whatever is due (now, or ``at``) for ``handlers``: (event, handler,
        attempts), sorted."""
        store = await self.backend.open()
        try:
            claimed = await claim_confirmed(store, 10, dict.fromkeys(handlers, 10), now=at)
        finally:
            await store.close()
        return sorted(keys(claimed))

    async def purge_done(self) -> int:
        """What the daemons' purge of settled events deletes with keep_done = 0."""
        store = await self.backend.open()
        try:
            return await store.purge_done(0)
        finally:
            await store.close()


async def fill(backend: Backend) -> Filled:
    """Fill ``backend``'s store through the store's own operations."""
    now = time.time()
    old = incoming(event_type="file.ready", received_at=now - 8 * DAY)
    waiting = incoming(event_type="comment.created", received_at=now - 120)
    mixed = incoming(event_type="comment.updated", received_at=now - 90)
    dead = incoming(event_type="file.upload.completed", received_at=now - 60)
    later = incoming(event_type="file.ready", received_at=now - 30)

    store = await backend.open()
    try:
        await store.accept(old, [LOG, NOTIFY])
        await store.accept(mixed, [LOG, NOTIFY])
        await store.accept(dead, [NOTIFY])
        await store.accept(later, [LOG])
        claimed = await claim_confirmed(store, 10, {LOG: 10, NOTIFY: 10}, now=now)
        ids = {(c.event_id, c.handler): c.delivery_id for c in claimed}
        assert len(ids) == 6
        await store.finish(ids[old.id, LOG], outcome="ok", seconds=0.2, error=None)
        # The old dead letter was buried 8 days ago: the store reads the clock when it
        # records an outcome.
        with mock.patch("time.time", return_value=now - 8 * DAY):
            await store.finish(
                ids[old.id, NOTIFY],
                outcome="error",
                seconds=1.0,
                error="HTTPStatusError: 500 from chat",
                dead=True,
            )
        for event in (mixed, dead):
            await store.finish(
                ids[event.id, NOTIFY],
                outcome="timeout",
                seconds=10.0,
                error="TimeoutError: no answer in 10s",
                dead=True,
            )
        for event in (mixed, later):
            await store.finish(
                ids[event.id, LOG],
                outcome="error",
                seconds=0.5,
                error="OSError: disk busy",
                next_attempt_at=now + 3600,
            )
        await store.accept(waiting, [LOG])
        describe = store.describe()
    finally:
        await store.close()
    return Filled(backend, describe, old, waiting, mixed, dead, later)


@pytest.fixture
async def filled(backend: Backend) -> Filled:
    """A filled store of this test's own, for commands that change it."""
    return await fill(backend)


Ran = dict[str, "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Shared:
    """One filled store per backend for every command that only reads, and each read-only
    command run once on it."""

    filled: Filled
    ran: Ran


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    backend = Backend(request.param, tmp_path_factory.mktemp(f"shared-{request.param}"), server)
    filled = asyncio.run(fill(backend))
    commands: dict[str, list[str]] = {
        "stats --json": ["stats", "--json"],
        "stats": ["stats"],
        "list --json": ["list", "--json"],
        "list dead --json": ["list", "--state", "dead", "--json"],
        "list handler --json": ["list", "--handler", LOG, "--json"],
        "list limit --json": ["list", "--limit", "2", "--json"],
        "list dead": ["list", "--state", "dead"],
        "list running": ["list", "--state", "running"],
        "show --json": ["show", filled.old.id, "--json"],
        "show unknown": ["show", "no-such-event"],
        "replay": ["replay"],
        "purge bogus": ["purge", "--dead", "--older-than", "bogus"],
    }
    # They only read, and a subprocess spends most of its life importing: all at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(backend.queue, *args) for name, args in commands.items()}
    return Shared(filled, {name: future.result() for name, future in futures.items()})


class TestQueueStats:
    def test_json_counts_per_state_and_handler_and_the_oldest_due_pending(self, shared: Shared):
        data = _json(shared.ran["stats --json"])
        age = data.pop("oldest_pending_seconds")
        assert data == {
            "events": 5,
            "deliveries": {"pending": 3, "running": 0, "done": 1, "dead": 3},
            "handlers": {
                LOG: {"pending": 3, "running": 0, "done": 1, "dead": 0},
                NOTIFY: {"pending": 0, "running": 0, "done": 0, "dead": 3},
            },
        }
        # "waiting" has been due for 2 minutes, though never claimed; "mixed" and "later"
        # are not due, so they do not count.
        assert 120 <= age < 150

    def test_text_shows_the_same_numbers(self, shared: Shared):
        result = shared.ran["stats"]
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["events      5", "deliveries  pending 3, running 0, done 1, dead 3"]
        assert re.fullmatch(r"oldest due pending  1[2-4]\d\.\ds", lines[2]), lines[2]
        assert lines[3:] == [f"  {LOG}: pending 3, done 1", f"  {NOTIFY}: dead 3"]


class TestQueueList:
    def test_every_delivery_newest_first_with_the_same_columns(self, shared: Shared):
        rows = _json(shared.ran["list --json"])
        filled = shared.filled
        assert all(set(row) == LIST_KEYS for row in rows)
        assert [(r["event_id"], r["handler"], r["state"]) for r in rows] == [
            (filled.later.id, LOG, "pending"),
            (filled.dead.id, NOTIFY, "dead"),
            (filled.mixed.id, NOTIFY, "dead"),
            (filled.mixed.id, LOG, "pending"),
            (filled.waiting.id, LOG, "pending"),
            (filled.old.id, NOTIFY, "dead"),
            (filled.old.id, LOG, "done"),
        ]
        assert len({r["id"] for r in rows}) == len(rows)
        later = rows[0]
        assert (later["type"], later["source"], later["attempts"], later["last_error"]) == (
            "file.ready",
            "default",
            1,
            "OSError: disk busy",
        )
        assert later["received_at"] == pytest.approx(filled.later.received_at, abs=1e-6)
        assert later["next_attempt_at"] == pytest.approx(time.time() + 3600, abs=60)

    def test_dead_letters_with_their_last_error(self, shared: Shared):
        rows = _json(shared.ran["list dead --json"])
        filled = shared.filled
        assert [
            (r["event_id"], r["type"], r["handler"], r["attempts"], r["last_error"]) for r in rows
        ] == [
            (filled.dead.id, "file.upload.completed", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (filled.mixed.id, "comment.updated", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (filled.old.id, "file.ready", NOTIFY, 1, "HTTPStatusError: 500 from chat"),
        ]

    def test_one_handler_newest_first(self, shared: Shared):
        rows = _json(shared.ran["list handler --json"])
        filled = shared.filled
        assert [(r["event_id"], r["state"]) for r in rows] == [
            (filled.later.id, "pending"),
            (filled.mixed.id, "pending"),
            (filled.waiting.id, "pending"),
            (filled.old.id, "done"),
        ]

    def test_limit_keeps_the_newest(self, shared: Shared):
        rows = _json(shared.ran["list limit --json"])
        filled = shared.filled
        assert [(r["event_id"], r["handler"]) for r in rows] == [
            (filled.later.id, LOG),
            (filled.dead.id, NOTIFY),
        ]

    def test_text_shows_the_delivery_id_handler_state_and_error(self, shared: Shared):
        result = shared.ran["list dead"]
        assert result.returncode == 0, result.stderr
        filled = shared.filled
        ids = {
            (r["event_id"], r["handler"]): str(r["id"])
            for r in _json(shared.ran["list dead --json"])
        }
        header, *lines = result.stdout.splitlines()
        assert header.split()[:6] == ["DELIVERY", "EVENT", "TYPE", "HANDLER", "STATE", "TRIES"]
        expected = [
            (filled.dead, "file.upload.completed", "TimeoutError: no answer in 10s"),
            (filled.mixed, "comment.updated", "TimeoutError: no answer in 10s"),
            (filled.old, "file.ready", "HTTPStatusError: 500 from chat"),
        ]
        assert len(lines) == len(expected)
        for line, (event, kind, error) in zip(lines, expected, strict=True):
            delivery = ids[event.id, NOTIFY]
            assert line.lstrip().startswith(delivery + " ")
            end = line.index(delivery) + len(delivery)
            assert line[end:].split(maxsplit=5) == [
                event.id, kind, NOTIFY, "dead", "1", error,
            ]  # fmt: skip
            # The event column lines up under its header however wide the delivery ids are.
            assert line.index(event.id, end) == header.index("EVENT")

    def test_nothing_to_list_is_said_so(self, shared: Shared):
        result = shared.ran["list running"]
        assert (result.returncode, result.stdout) == (0, "no deliveries\n")


class TestQueueShow:
    def test_an_event_with_its_payload_and_deliveries(self, shared: Shared):
        data = _json(shared.ran["show --json"])
        old = shared.filled.old
        assert set(data) == SHOW_KEYS
        assert (data["id"], data["source"], data["type"], data["timestamp"]) == (
            old.id,
            "default",
            "file.ready",
            old.timestamp,
        )
        assert data["received_at"] == pytest.approx(old.received_at, abs=1e-6)
        assert data["payload"] == json.loads(old.body)
        assert all(set(d) == DELIVERY_KEYS for d in data["deliveries"])
        assert [
            (d["handler"], d["state"], d["attempts"], d["last_outcome"], d["last_error"])
            for d in data["deliveries"]
        ] == [
            (LOG, "done", 1, "ok", None),
            (NOTIFY, "dead", 1, "error", "HTTPStatusError: 500 from chat"),
        ]
        notify = data["deliveries"][1]
        assert notify["last_seconds"] == 1.0
        assert notify["updated_at"] == pytest.approx(time.time() - 8 * DAY, abs=60)

    def test_an_unknown_event_is_an_error_naming_the_store(self, shared: Shared):
        result = shared.ran["show unknown"]
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"no event no-such-event in {shared.filled.describe}\n"


class TestQueueReplay:
    async def test_an_event_id_replays_its_dead_deliveries_only(self, filled: Filled):
        assert await filled.claim(NOTIFY) == [], "nothing of NOTIFY is due before the replay"
        result = filled.backend.queue("replay", filled.mixed.id)
        assert (result.returncode, result.stdout) == (0, "replayed 1 deliveries\n")
        assert await filled.deliveries(filled.mixed) == {
            LOG: ("pending", 1),
            NOTIFY: ("pending", 0),
        }
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("dead", 1)}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert filled.backend.dead_letters() == sorted(
            [(filled.old.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        show = filled.backend.json("show", filled.mixed.id)
        assert show["deliveries"][1]["next_attempt_at"] == pytest.approx(time.time(), abs=30)
        # Due now, for any receiver, and its attempts start over.
        assert await filled.claim(NOTIFY) == [(filled.mixed.id, NOTIFY, 1)]
        assert filled.backend.json("stats")["deliveries"] == counts(
            pending=3, running=1, done=1, dead=2
        )

    async def test_a_delivery_id_replays_that_delivery(self, filled: Filled):
        [delivery] = [
            row["id"]
            for row in filled.backend.json("list", "--state", "dead")
            if row["event_id"] == filled.dead.id
        ]
        assert filled.backend.json("replay", str(delivery)) == {"replayed": 1}
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("pending", 0)}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.claim(NOTIFY) == [(filled.dead.id, NOTIFY, 1)]

    async def test_all_dead_replays_every_dead_letter_once(self, filled: Filled):
        result = filled.backend.queue("replay", "--all-dead")
        assert (result.returncode, result.stdout) == (0, "replayed 3 deliveries\n")
        assert filled.backend.dead_letters() == []
        assert filled.backend.json("stats")["deliveries"] == counts(pending=6, done=1)
        # Nothing is dead any more: a second replay changes nothing, counters included.
        assert filled.backend.json("replay", "--all-dead") == {"replayed": 0}
        assert filled.backend.json("stats")["deliveries"] == counts(pending=6, done=1)
        assert [await filled.deliveries(e) for e in (filled.old, filled.mixed, filled.dead)] == [
            {LOG: ("done", 1), NOTIFY: ("pending", 0)},
            {LOG: ("pending", 1), NOTIFY: ("pending", 0)},
            {NOTIFY: ("pending", 0)},
        ]
        assert await filled.claim(NOTIFY) == sorted(
            [(filled.old.id, NOTIFY, 1), (filled.mixed.id, NOTIFY, 1), (filled.dead.id, NOTIFY, 1)]
        )

    async def test_ids_that_are_not_dead_replay_nothing(self, filled: Filled):
        not_dead = [
            str(row["id"])
            for row in filled.backend.json("list")
            if row["state"] != "dead"
        ]  # fmt: skip
        data = filled.backend.json(
            "replay", filled.later.id, *not_dead, "no-such-event", "x y", "123456"
        )
        assert data == {"replayed": 0}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.deliveries(filled.later) == {LOG: ("pending", 1)}
        assert len(filled.backend.dead_letters()) == 3

    def test_nothing_named_is_a_usage_error(self, shared: Shared):
        result = shared.ran["replay"]
        assert result.returncode == 2
        assert result.stderr == "name event or delivery ids to replay, or --all-dead\n"
        assert len(shared.filled.backend.dead_letters()) == 3


class TestQueuePurge:
    async def test_older_than_keeps_young_dead_letters(self, filled: Filled):
        queue, json_of = filled.backend.queue, filled.backend.json
        result = queue("purge", "--dead", "--older-than", "7d")
        assert (result.returncode, result.stdout) == (0, "purged 1 dead deliveries\n")
        assert filled.backend.dead_letters() == sorted(
            [(filled.mixed.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        # Gone from every view: counts, listings, the event itself.
        stats = json_of("stats")
        assert stats["deliveries"] == counts(pending=3, done=1, dead=2)
        assert stats["handlers"][NOTIFY] == counts(dead=2)
        assert [r["event_id"] for r in json_of("list", "--handler", NOTIFY)] == [
            filled.dead.id,
            filled.mixed.id,
        ]
        assert [d["handler"] for d in json_of("show", filled.old.id)["deliveries"]] == [LOG]
        # A purged dead letter cannot be replayed.
        assert json_of("replay", filled.old.id) == {"replayed": 0}
        # The old event still has its done delivery: the daemons' purge of done events takes it.
        assert await filled.purge_done() == 1
        assert queue("show", filled.old.id).returncode == 1
        assert json_of("stats")["events"] == 4

    async def test_zero_purges_every_dead_letter_and_the_events_left_with_nothing_to_run(
        self, filled: Filled
    ):
        queue, json_of = filled.backend.queue, filled.backend.json
        assert json_of("purge", "--dead", "--older-than", "0s") == {"purged": 3}
        assert filled.backend.dead_letters() == []
        stats = json_of("stats")
        assert stats["deliveries"] == counts(pending=3, done=1)
        assert stats["handlers"] == {LOG: counts(pending=3, done=1)}
        assert json_of("list", "--handler", NOTIFY) == []
        assert json_of("list", "--state", "dead") == []
        # "dead" had nothing else: it went with its dead letter.
        assert queue("show", filled.dead.id).returncode == 1
        assert stats["events"] == 4
        assert filled.backend.event_ids() == {
            e.id for e in (filled.old, filled.waiting, filled.mixed, filled.later)
        }
        # "old" has its done delivery: settled, the daemons' purge takes it. "mixed" still
        # has a pending delivery: it stays.
        assert await filled.purge_done() == 1
        assert queue("show", filled.old.id).returncode == 1
        assert [(r["event_id"], r["handler"]) for r in json_of("list")] == [
            (filled.later.id, LOG),
            (filled.mixed.id, LOG),
            (filled.waiting.id, LOG),
        ]
        assert json_of("stats")["deliveries"] == counts(pending=3)
        assert json_of("purge", "--dead") == {"purged": 0}

    async def test_a_purged_dead_letter_is_no_delivery_of_its_event_any_more(self, filled: Filled):
        assert filled.backend.json("purge", "--dead", "--older-than", "7d") == {"purged": 1}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1)}

    def test_a_bad_duration_is_a_usage_error(self, shared: Shared):
        result = shared.ran["purge bogus"]
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(
            'argument --older-than: expected a duration like "12h" or "7d", got \'bogus\''
        )
        assert len(shared.filled.backend.dead_letters()) == 3
