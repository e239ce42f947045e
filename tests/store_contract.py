"""The store's contract, held against both backends: a real SQLite file and a real
``redis-server``. Every test of ``test_store_contract_*.py`` runs once per backend, and the
same assertions must hold on both; what only one backend promises (SQLite's file, schema
and group commit; Redis's leases across receivers and its keys) is tested in that backend's
own files.

Stores are opened in one place, `Backend.open`, from the ``[spool]`` table a daemon reads;
the operator's queue operations are driven through ``frameiod queue`` as a subprocess, the
interface that stays while the Python API behind it changes.

This module holds what those files share: the backends, the helpers, and the fixtures,
which each file loads with ``pytest_plugins = ["store_contract"]``.

PYTEST_DONT_REWRITE: the files import the helpers before pytest loads the module as their
plugin, too late to rewrite its asserts; each says what failed in its own message.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from redis_support import RedisServer, redis_spool_lines
from support import JSON_LOG, SECRET, incoming, run_cli, write_config

from frameiod.config import load_config
from frameiod.store.base import Claimed, Incoming, SpoolBackend
from frameiod.store.open import open_backend
from frameiod.testing import config_toml

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
            spool = redis_spool_lines(self.server.url, self.prefix)
        self.config = write_config(
            self.directory,
            config_toml(secret=SECRET, log=JSON_LOG, spool=spool, source='tolerance = "5m"'),
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
        return parsed(self.queue(*args, "--json"))

    def event_ids(self) -> set[str]:
        """The events the store keeps, read past the store's own code."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.directory / "frameiod.db")) as db:
                return {row[0] for row in db.execute("SELECT id FROM events")}
        with self.redis_client() as client:
            return set(client.zrange(f"{self.prefix}:events", 0, -1))

    def dead_letters(self) -> list[tuple[str, str]]:
        """(event id, handler) of every dead letter kept, sorted, read past the store."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.directory / "frameiod.db")) as db:
                rows = db.execute("SELECT event_id, handler FROM deliveries WHERE state = 'dead'")
                return sorted(rows)
        with self.redis_client() as client:
            entries = client.xrange(f"{self.prefix}:dead")
        return sorted((fields["event_id"], fields["handler"]) for _, fields in entries)

    def let_leases_lapse(self) -> None:
        """Make every claim look abandoned long ago, as if its receiver had died: stream
        entries a receiver read are taken over only once Redis's own clock says they have
        been idle past every lease, which ``claim(now=...)`` cannot move. (SQLite: nothing
        to do; a claim's time is the caller's.)"""
        if self.kind == "sqlite":
            return
        with self.redis_client() as client:
            for stream in client.scan_iter(f"{self.prefix}:stream:*"):
                for entry in client.xpending_range(stream, "frameiod", "-", "+", 1000):
                    client.xclaim(
                        stream, "frameiod", entry["consumer"], 0, [entry["message_id"]],
                        idle=int(LATER * 1000),
                    )  # fmt: skip

    def redis_client(self) -> redis.Redis:
        """A client of the Redis server this backend keeps its keys on."""
        assert self.server is not None
        return redis.Redis.from_url(self.server.url, decode_responses=True)


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
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
        assert len(ids) == 6, ids
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
