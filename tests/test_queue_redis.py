"""``frameiod queue ...`` against the Redis spool, as a user runs it: a real redis-server,
filled beforehand through the real `RedisSpool`, and the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from redis_support import RedisServer, free_port
from support import (
    SECRET,
    assert_hostile_text_escaped,
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

DAY = 86400.0
LOG, NOTIFY = "log:write", "notify:post"

# The keys of the rows frameiod.store.base documents: the Redis ones must match.
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

Ran = dict[str, "subprocess.CompletedProcess[str]"]


def config_text(url: str, prefix: str) -> str:
    """The suite's usual config, with the spool on Redis under ``prefix``."""
    return f"""
[server]
host = "127.0.0.1"
port = 0

[log]
format = "json"

[sources.default]
secrets = ["{SECRET}"]
tolerance = "5m"

[spool]
backend = "redis"
redis_url = "{url}"
stream_prefix = "{prefix}"
"""


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

    def dead_letters(self) -> list[tuple[str, str]]:
        """(event id, handler) of every entry in the dead-letter stream."""
        with self.redis() as client:
            entries = client.xrange(f"{self.prefix}:dead")
        return [(fields["event_id"], fields["handler"]) for _, fields in entries]

    async def deliveries(self, event: Incoming) -> dict[str, tuple[str, int]]:
        """handler → (state, attempts) of one event, as the spool itself reports them."""
        spool = await open_spool(self.config)
        try:
            rows = await spool.deliveries_of(event.id)
        finally:
            await spool.close()
        return {row["handler"]: (row["state"], row["attempts"]) for row in rows}

    async def claim(self, *handlers: str) -> list[tuple[str, str, int]]:
        """Claim whatever is due now for ``handlers``, as a receiver would: (event, handler,
        attempts) sorted."""
        spool = await open_spool(self.config)
        try:
            claimed = await spool.claim(10, dict.fromkeys(handlers, 10))
        finally:
            await spool.close()
        return sorted((c.event_id, c.handler, c.attempts) for c in claimed)

    async def purge_done(self) -> int:
        """What the daemons' purge of settled events deletes with keep_done = 0."""
        spool = await open_spool(self.config)
        try:
            return await spool.purge_done(0)
        finally:
            await spool.close()


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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Filled:
    """One filled spool for every command that only reads."""
    return asyncio.run(fill(tmp_path_factory.mktemp("shared"), redis_server.url))


@pytest.fixture(scope="module")
def ran(shared: Filled) -> Ran:
    """The read-only commands, each run once and all at the same time: name → result."""
    commands: dict[str, list[str]] = {
        "stats --json": ["stats", "--json"],
        "stats": ["stats"],
        "list --json": ["list", "--json"],
        "list dead --json": ["list", "--state", "dead", "--json"],
        "list handler --json": ["list", "--handler", LOG, "--json"],
        "list limit --json": ["list", "--limit", "2", "--json"],
        "list dead": ["list", "--state", "dead"],
        "list running": ["list", "--state", "running"],
        "show --json": ["show", shared.old.id, "--json"],
        "show unknown": ["show", "no-such-event"],
        "replay": ["replay"],
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(shared.queue, *args) for name, args in commands.items()}
    return {name: future.result() for name, future in futures.items()}


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _delivery(event: Incoming, handler: str) -> str:
    return f"{event.id} {handler}"


class TestStats:
    def test_json_counts_per_state_and_handler_and_the_oldest_due_pending(self, ran: Ran):
        data = _json(ran["stats --json"])
        age = data.pop("oldest_pending_seconds")
        assert data == {
            "events": 5,
            "deliveries": {"pending": 3, "running": 0, "done": 1, "dead": 3},
            "handlers": {
                LOG: {"pending": 3, "running": 0, "done": 1, "dead": 0},
                NOTIFY: {"pending": 0, "running": 0, "done": 0, "dead": 3},
            },
        }
        # "waiting" has been due for 2 minutes, though in no due set yet; "mixed" and
        # "later" are not due, so they do not count.
        assert 120 <= age < 150

    def test_text_shows_the_same_numbers(self, ran: Ran):
        result = ran["stats"]
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["events      5", "deliveries  pending 3, running 0, done 1, dead 3"]
        assert re.fullmatch(r"oldest due pending  1[2-4]\d\.\ds", lines[2]), lines[2]
        assert lines[3:] == [f"  {LOG}: pending 3, done 1", f"  {NOTIFY}: dead 3"]

    async def test_negative_counters_read_as_zero(self, filled: Filled):
        with filled.redis() as client:
            client.hset(f"{filled.prefix}:counts", mapping={"running": -2})
        assert filled.json("stats")["deliveries"]["running"] == 0


class TestList:
    def test_rows_have_the_sqlite_columns_and_redis_delivery_ids(self, ran: Ran, shared: Filled):
        rows = _json(ran["list --json"])
        assert all(set(row) == LIST_KEYS for row in rows)
        assert [(r["id"], r["state"]) for r in rows] == [
            (_delivery(shared.later, LOG), "pending"),
            (_delivery(shared.dead, NOTIFY), "dead"),
            (_delivery(shared.mixed, NOTIFY), "dead"),
            (_delivery(shared.mixed, LOG), "pending"),
            (_delivery(shared.waiting, LOG), "pending"),
            (_delivery(shared.old, NOTIFY), "dead"),
            (_delivery(shared.old, LOG), "done"),
        ]
        later = rows[0]
        assert (later["type"], later["source"], later["attempts"], later["last_error"]) == (
            "file.ready",
            "default",
            1,
            "OSError: disk busy",
        )
        assert later["received_at"] == pytest.approx(shared.later.received_at, abs=1e-6)
        assert later["next_attempt_at"] == pytest.approx(time.time() + 3600, abs=60)

    def test_dead_letters_with_their_last_error(self, ran: Ran, shared: Filled):
        rows = _json(ran["list dead --json"])
        assert [
            (r["event_id"], r["type"], r["handler"], r["attempts"], r["last_error"]) for r in rows
        ] == [
            (shared.dead.id, "file.upload.completed", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (shared.mixed.id, "comment.updated", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (shared.old.id, "file.ready", NOTIFY, 1, "HTTPStatusError: 500 from chat"),
        ]

    def test_one_handler_newest_first(self, ran: Ran, shared: Filled):
        rows = _json(ran["list handler --json"])
        assert [(r["event_id"], r["state"]) for r in rows] == [
            (shared.later.id, "pending"),
            (shared.mixed.id, "pending"),
            (shared.waiting.id, "pending"),
            (shared.old.id, "done"),
        ]

    def test_limit_keeps_the_newest(self, ran: Ran, shared: Filled):
        rows = _json(ran["list limit --json"])
        assert [(r["event_id"], r["handler"]) for r in rows] == [
            (shared.later.id, LOG),
            (shared.dead.id, NOTIFY),
        ]

    def test_text_shows_the_delivery_id_handler_state_and_error(self, ran: Ran, shared: Filled):
        result = ran["list dead"]
        assert result.returncode == 0, result.stderr
        header, *lines = result.stdout.splitlines()
        assert header.split()[:6] == ["DELIVERY", "EVENT", "TYPE", "HANDLER", "STATE", "TRIES"]
        # The delivery id is two words: the event id and the handler.
        expected = [
            (shared.dead, "file.upload.completed", "TimeoutError: no answer in 10s"),
            (shared.mixed, "comment.updated", "TimeoutError: no answer in 10s"),
            (shared.old, "file.ready", "HTTPStatusError: 500 from chat"),
        ]
        assert [line.split(maxsplit=7) for line in lines] == [
            [event.id, NOTIFY, event.id, kind, NOTIFY, "dead", "1", error]
            for event, kind, error in expected
        ]
        events = [event for event, _, _ in expected]
        # The event column lines up under its header however wide the delivery ids are.
        starts = {line.index(event.id, 1) for line, event in zip(lines, events, strict=True)}
        assert starts == {header.index("EVENT")}

    def test_nothing_to_list_is_said_so(self, ran: Ran):
        result = ran["list running"]
        assert (result.returncode, result.stdout) == (0, "no deliveries\n")


class TestShow:
    def test_an_event_with_its_payload_and_deliveries(self, ran: Ran, shared: Filled):
        data = _json(ran["show --json"])
        assert set(data) == SHOW_KEYS
        assert (data["id"], data["source"], data["type"], data["timestamp"]) == (
            shared.old.id,
            "default",
            "file.ready",
            shared.old.timestamp,
        )
        assert data["received_at"] == pytest.approx(shared.old.received_at, abs=1e-6)
        assert data["payload"] == json.loads(shared.old.body)
        assert all(set(d) == DELIVERY_KEYS for d in data["deliveries"])
        assert [
            (d["id"], d["handler"], d["state"], d["attempts"], d["last_outcome"], d["last_error"])
            for d in data["deliveries"]
        ] == [
            (_delivery(shared.old, LOG), LOG, "done", 1, "ok", None),
            (
                _delivery(shared.old, NOTIFY),
                NOTIFY,
                "dead",
                1,
                "error",
                "HTTPStatusError: 500 from chat",
            ),
        ]
        notify = data["deliveries"][1]
        assert notify["last_seconds"] == 1.0
        assert notify["updated_at"] == pytest.approx(time.time() - 8 * DAY, abs=60)

    def test_an_unknown_event_is_an_error(
        self, ran: Ran, shared: Filled, redis_server: RedisServer
    ):
        result = ran["show unknown"]
        assert (result.returncode, result.stdout) == (1, "")
        assert (
            result.stderr == f"no event no-such-event in {redis_server.url} ({shared.prefix}:*)\n"
        )


class TestReplay:
    async def test_an_event_id_replays_its_dead_deliveries_only(self, filled: Filled):
        assert await filled.claim(NOTIFY) == [], "nothing of NOTIFY is due before the replay"
        result = filled.queue("replay", filled.mixed.id)
        assert (result.returncode, result.stdout) == (0, "replayed 1 deliveries\n")
        assert await filled.deliveries(filled.mixed) == {
            LOG: ("pending", 1),
            NOTIFY: ("pending", 0),
        }
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("dead", 1)}
        assert sorted(filled.dead_letters()) == sorted(
            [(filled.old.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        show = filled.json("show", filled.mixed.id)
        assert show["deliveries"][1]["next_attempt_at"] == pytest.approx(time.time(), abs=30)
        # Due now, for any receiver, and its attempts start over.
        assert await filled.claim(NOTIFY) == [(filled.mixed.id, NOTIFY, 1)]
        assert filled.json("stats")["deliveries"] == {
            "pending": 3,
            "running": 1,
            "done": 1,
            "dead": 2,
        }

    async def test_a_delivery_id_replays_that_delivery(self, filled: Filled):
        data = filled.json("replay", _delivery(filled.dead, NOTIFY))
        assert data == {"replayed": 1}
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("pending", 0)}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.claim(NOTIFY) == [(filled.dead.id, NOTIFY, 1)]

    async def test_all_dead_replays_every_dead_letter_once(self, filled: Filled):
        result = filled.queue("replay", "--all-dead")
        assert (result.returncode, result.stdout) == (0, "replayed 3 deliveries\n")
        assert filled.dead_letters() == []
        assert filled.json("stats")["deliveries"] == {
            "pending": 6,
            "running": 0,
            "done": 1,
            "dead": 0,
        }
        # Nothing is dead any more: a second replay changes nothing, counters included.
        assert filled.json("replay", "--all-dead") == {"replayed": 0}
        assert filled.json("stats")["deliveries"]["pending"] == 6
        assert await filled.claim(NOTIFY) == sorted(
            [(filled.old.id, NOTIFY, 1), (filled.mixed.id, NOTIFY, 1), (filled.dead.id, NOTIFY, 1)]
        )

    async def test_ids_that_are_not_dead_replay_nothing(self, filled: Filled):
        data = filled.json(
            "replay", filled.later.id, _delivery(filled.old, LOG), "no-such-event", "x y"
        )
        assert data == {"replayed": 0}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.deliveries(filled.later) == {LOG: ("pending", 1)}

    def test_nothing_named_is_a_usage_error(self, ran: Ran, shared: Filled):
        result = ran["replay"]
        assert result.returncode == 2
        assert result.stderr == "name event or delivery ids to replay, or --all-dead\n"
        assert len(shared.dead_letters()) == 3


class TestPurge:
    async def test_older_than_keeps_young_dead_letters(self, filled: Filled):
        result = filled.queue("purge", "--dead", "--older-than", "7d")
        assert (result.returncode, result.stdout) == (0, "purged 1 dead deliveries\n")
        assert sorted(filled.dead_letters()) == sorted(
            [(filled.mixed.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        # Gone from every view: counts, listings, the event itself.
        stats = filled.json("stats")
        assert stats["deliveries"] == {"pending": 3, "running": 0, "done": 1, "dead": 2}
        assert stats["handlers"][NOTIFY] == {"pending": 0, "running": 0, "done": 0, "dead": 2}
        assert [r["event_id"] for r in filled.json("list", "--handler", NOTIFY)] == [
            filled.dead.id,
            filled.mixed.id,
        ]
        assert [d["handler"] for d in filled.json("show", filled.old.id)["deliveries"]] == [LOG]
        # A purged dead letter cannot be replayed.
        assert filled.json("replay", filled.old.id) == {"replayed": 0}
        # The old event has nothing left to run: the daemons' purge of done events takes it.
        assert await filled.purge_done() == 1
        assert filled.queue("show", filled.old.id).returncode == 1
        assert filled.json("stats")["events"] == 4

    async def test_zero_purges_every_dead_letter_and_the_events_left_with_nothing_to_run(
        self, filled: Filled
    ):
        data = filled.json("purge", "--dead", "--older-than", "0s")
        assert data == {"purged": 3}
        assert filled.dead_letters() == []
        stats = filled.json("stats")
        assert stats["deliveries"] == {"pending": 3, "running": 0, "done": 1, "dead": 0}
        assert stats["handlers"] == {LOG: {"pending": 3, "running": 0, "done": 1, "dead": 0}}
        assert filled.json("list", "--handler", NOTIFY) == []
        assert filled.json("list", "--state", "dead") == []
        # "dead" had nothing else: it went with its dead letter, as on SQLite.
        assert filled.queue("show", filled.dead.id).returncode == 1
        assert filled.json("stats")["events"] == 4
        # "old" has its done delivery: settled, the daemons' purge takes it. "mixed" still
        # has a pending delivery: it stays.
        assert await filled.purge_done() == 1
        assert filled.queue("show", filled.old.id).returncode == 1
        assert [r["id"] for r in filled.json("list")] == [
            _delivery(filled.later, LOG),
            _delivery(filled.mixed, LOG),
            _delivery(filled.waiting, LOG),
        ]
        assert filled.json("stats")["deliveries"] == {
            "pending": 3,
            "running": 0,
            "done": 0,
            "dead": 0,
        }
        assert filled.json("purge", "--dead") == {"purged": 0}

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


class TestHostileText:
    async def test_a_type_and_an_error_from_outside_are_shown_escaped(
        self, tmp_path: Path, redis_server: RedisServer
    ):
        text = config_text(redis_server.url, f"t{uuid.uuid4().hex[:12]}")
        spool = await open_spool(make_config(tmp_path, text))
        await assert_hostile_text_escaped(spool, write_config(tmp_path, text))
