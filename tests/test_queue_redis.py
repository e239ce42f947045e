"""``frameiod queue ...`` against the Redis spool, as a user runs it: a real redis-server,
filled beforehand through the real `RedisSpool`, and the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from redis_support import RedisServer, free_port, redis_spool_lines
from support import (
    JSON_LOG,
    SECRET,
    incoming,
    make_config,
    run_cli,
    write_config,
)

from frameiod.config import Config
from frameiod.store.base import Incoming
from frameiod.store.open import open_spool
from frameiod.store.redis import actions as redis_admin
from frameiod.store.redis import spool as redis_spool
from frameiod.testing import config_toml

DAY = 86400.0
LOG, NOTIFY = "log:write", "notify:post"


def config_text(url: str, prefix: str) -> str:
    """The suite's usual config, with the spool on Redis under ``prefix``."""
    return config_toml(
        secret=SECRET, log=JSON_LOG, spool=redis_spool_lines(url, prefix), source='tolerance = "5m"'
    )


@dataclass(frozen=True)
class Filled:
    """A Redis spool with something in every interesting state, and where to find it.

    - ``old``: received 8 days ago; LOG done, NOTIFY dead since 8 days (an old dead letter).
    - ``waiting``: received 2 minutes ago; LOG pending and due (the oldest due pending), not
      yet taken in from its stream by any receiver.
    - ``mixed``: received 90 s ago; LOG failed once, pending again in an hour; NOTIFY dead
      just now.
    - ``dead``: received 1 minute ago; NOTIFY dead just now (a young dead letter).
    - ``later``: received 30 s ago; LOG failed once, pending again in an hour.
    """

    path: Path
    config: Config
    url: str
    prefix: str
    old: Incoming
    waiting: Incoming
    mixed: Incoming
    dead: Incoming
    later: Incoming

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``frameiod queue ARGS --config <this config>``."""
        return run_cli("queue", *args, "--config", str(self.path))

    def json(self, *args: str) -> Any:
        """``frameiod queue ARGS --json``, parsed; it must succeed."""
        return _json(self.queue(*args, "--json"))

    def redis(self) -> redis.Redis:
        """A plain client on this spool's Redis, for looking at keys directly."""
        return redis.Redis.from_url(self.url, decode_responses=True)


async def fill(directory: Path, url: str) -> Filled:
    """Write a config into ``directory`` with a key prefix of its own and fill that spool
    through the `RedisSpool` API."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    path = write_config(directory, config_text(url, prefix))
    config = make_config(directory, config_text(url, prefix))
    now = time.time()
    old = incoming(event_type="file.ready", received_at=now - 8 * DAY)
    waiting = incoming(event_type="comment.created", received_at=now - 120)
    mixed = incoming(event_type="comment.updated", received_at=now - 90)
    dead = incoming(event_type="file.upload.completed", received_at=now - 60)
    later = incoming(event_type="file.ready", received_at=now - 30)

    spool = await open_spool(config)
    try:
        await spool.accept(old, [LOG, NOTIFY])
        await spool.accept(mixed, [LOG, NOTIFY])
        await spool.accept(dead, [NOTIFY])
        await spool.accept(later, [LOG])
        claimed = await spool.claim(10, {LOG: 10, NOTIFY: 10}, now=now)
        ids = {(c.event_id, c.handler): c.delivery_id for c in claimed}
        assert len(ids) == 6
        await spool.finish(ids[old.id, LOG], outcome="ok", seconds=0.2, error=None)
        # The old dead letter was buried 8 days ago: the spool reads the clock when it
        # records a death.
        with mock.patch.object(redis_spool.time, "time", return_value=now - 8 * DAY):
            await spool.finish(
                ids[old.id, NOTIFY],
                outcome="error",
                seconds=1.0,
                error="HTTPStatusError: 500 from chat",
                dead=True,
            )
        for event in (mixed, dead):
            await spool.finish(
                ids[event.id, NOTIFY],
                outcome="timeout",
                seconds=10.0,
                error="TimeoutError: no answer in 10s",
                dead=True,
            )
        for event in (mixed, later):
            await spool.finish(
                ids[event.id, LOG],
                outcome="error",
                seconds=0.5,
                error="OSError: disk busy",
                next_attempt_at=now + 3600,
            )
        # Accepted after the last claim: no receiver has moved it into a due set yet.
        await spool.accept(waiting, [LOG])
    finally:
        await spool.close()
    return Filled(path, config, url, prefix, old, waiting, mixed, dead, later)


@pytest.fixture
async def filled(tmp_path: Path, redis_server: RedisServer) -> Filled:
    """A filled spool of this test's own, for commands that change it."""
    return await fill(tmp_path, redis_server.url)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestStats:
    async def test_negative_counters_read_as_zero(self, filled: Filled):
        with filled.redis() as client:
            client.hset(f"{filled.prefix}:counts", mapping={"running": -2})
        assert filled.json("stats")["deliveries"]["running"] == 0


class TestPurge:
    async def test_an_event_whose_last_delivery_finishes_after_a_purge_is_settled(
        self, filled: Filled
    ):
        purged = filled.queue("purge", "--dead", "--older-than", "0s")
        if purged.stdout != "purged 3 dead deliveries\n":
            pytest.fail(f"the purge did not go through: {purged.stdout!r} {purged.stderr!r}")
        spool = await open_spool(filled.config)
        try:
            # Two hours on: the retry of "mixed" is due.
            claimed = await spool.claim(10, {LOG: 10}, now=time.time() + 7200)
            mine = [c for c in claimed if c.event_id == filled.mixed.id]
            if len(mine) != 1:
                pytest.fail(f"expected to claim the LOG delivery of mixed, got {claimed}")
            await spool.finish(mine[0].delivery_id, outcome="ok", seconds=0.1, error=None)
        finally:
            await spool.close()
        with filled.redis() as client:
            settled = client.zscore(f"{filled.prefix}:settled", filled.mixed.id)
        assert settled is not None, "mixed is done (LOG) or purged (NOTIFY): it is settled"


class TestPaging:
    async def test_every_event_once_across_pages_and_ties(
        self, tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ):
        # In-process, with pages of 2: the CLI's 200 would need hundreds of events.
        monkeypatch.setattr(redis_admin, "_PAGE", 2)
        prefix = f"t{uuid.uuid4().hex[:12]}"
        config = make_config(tmp_path, config_text(redis_server.url, prefix))
        now = time.time()
        # Three arrivals at the very same time straddle the first page boundary.
        events = [
            incoming(event_type="file.ready", received_at=at)
            for at in (now - 50, now - 40, now - 40, now - 40)
        ]
        events.append(incoming(event_type="file.ready", received_at=now - 30))
        spool = await open_spool(config)
        try:
            for event in events:
                await spool.accept(event, [LOG])
        finally:
            await spool.close()
        newest_first = sorted(events, key=lambda e: (e.received_at, e.id), reverse=True)
        operator = await open_spool(config, role="operator")
        try:
            rows = await operator.list_deliveries(None, None, 50)
            counted = (await operator.stats())["handlers"]
            limited = await operator.list_deliveries(None, LOG, 3)
        finally:
            await operator.close()
        assert [r["event_id"] for r in rows] == [e.id for e in newest_first]
        assert counted == {LOG: {"pending": 5, "running": 0, "done": 0, "dead": 0}}
        assert [r["event_id"] for r in limited] == [e.id for e in newest_first[:3]]


class TestRedisUnreachable:
    def test_nothing_listening_is_one_line_without_the_password(self, tmp_path: Path):
        port = free_port()
        path = write_config(tmp_path, config_text(f"redis://:hunter2@127.0.0.1:{port}/0", "x"))
        for args in (["stats"], ["replay", "--all-dead", "--json"]):
            result = run_cli("queue", *args, "--config", str(path))
            assert (result.returncode, result.stdout) == (1, ""), args
            prefix = f"cannot use Redis at redis://:***@127.0.0.1:{port}/0: "
            assert result.stderr.startswith(prefix), result.stderr
            assert "Connection refused" in result.stderr
            assert "hunter2" not in result.stderr
            assert len(result.stderr.splitlines()) == 1, result.stderr
