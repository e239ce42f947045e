"""``frameiod queue ...`` on what only the Redis spool has (its counters, settled set,
paging and URLs): a real redis-server, filled as the store contract fills every store
(`store_contract.fill`), and the CLI as a subprocess. What both backends promise is in
``test_store_contract_queue.py``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from redis_support import RedisServer, free_port, redis_spool_lines
from store_contract import LOG, Backend, Filled, fill
from support import (
    JSON_LOG,
    SECRET,
    incoming,
    make_config,
    run_cli,
    write_config,
)

from frameiod.store.open import open_spool
from frameiod.store.redis import actions as redis_admin
from frameiod.testing import config_toml


def config_text(url: str, prefix: str) -> str:
    """The suite's usual config, with the spool on Redis under ``prefix``."""
    return config_toml(
        secret=SECRET, log=JSON_LOG, spool=redis_spool_lines(url, prefix), source='tolerance = "5m"'
    )


@pytest.fixture
async def filled(tmp_path: Path, redis_server: RedisServer) -> Filled:
    """A Redis store of this test's own, filled as the contract suite fills every store."""
    return await fill(Backend("redis", tmp_path / "store", redis_server))


class TestStats:
    async def test_negative_counters_read_as_zero(self, filled: Filled):
        with filled.backend.redis_client() as client:
            client.hset(f"{filled.backend.prefix}:counts", mapping={"running": -2})
        assert filled.backend.json("stats")["deliveries"]["running"] == 0


class TestPurge:
    async def test_an_event_whose_last_delivery_finishes_after_a_purge_is_settled(
        self, filled: Filled
    ):
        purged = filled.backend.queue("purge", "--dead", "--older-than", "0s")
        if purged.stdout != "purged 3 dead deliveries\n":
            pytest.fail(f"the purge did not go through: {purged.stdout!r} {purged.stderr!r}")
        spool = await filled.backend.open()
        try:
            # Two hours on: the retry of "mixed" is due.
            claimed = await spool.claim(10, {LOG: 10}, now=time.time() + 7200)
            mine = [c for c in claimed if c.event_id == filled.mixed.id]
            if len(mine) != 1:
                pytest.fail(f"expected to claim the LOG delivery of mixed, got {claimed}")
            await spool.finish(mine[0].delivery_id, outcome="ok", seconds=0.1, error=None)
        finally:
            await spool.close()
        with filled.backend.redis_client() as client:
            settled = client.zscore(f"{filled.backend.prefix}:settled", filled.mixed.id)
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
