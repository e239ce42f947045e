"""RedisSpool and RedisSourceLimiter in process, against a real redis-server: several
spools on one prefix stand for several receivers ("nodes") sharing one queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis_support import RedisServer, free_port, redis_spool_lines
from structlog.testing import capture_logs
from support import SECRET, incoming, make_config

from frameiod.http.server import READY_CHECK_SECONDS
from frameiod.store import redis_keys as redis_store
from frameiod.store.base import Accepted, Claimed, RateLimited, SpoolError, SpoolUnavailable
from frameiod.store.open import open_spool
from frameiod.store.redis import LEASE_GRACE, RedisSpool
from frameiod.store.redis_keys import GROUP
from frameiod.store.redis_ratelimit import RedisSourceLimiter
from frameiod.testing import config_toml

OpenNode = Callable[..., Awaitable[RedisSpool]]


def config_text(url: str, prefix: str, handler_timeout: str = "30s") -> str:
    """A config with the spool on Redis under ``prefix``."""
    return config_toml(
        secret=SECRET,
        spool=redis_spool_lines(url, prefix),
        dispatch=f'handler_timeout = "{handler_timeout}"',
    )


def counts(pending: int = 0, running: int = 0, done: int = 0, dead: int = 0) -> dict[str, int]:
    return {"pending": pending, "running": running, "done": done, "dead": dead}


def states(rows: list[dict[str, Any]]) -> list[tuple[str, str | None, int]]:
    return [(row["handler"], row["state"], row["attempts"]) for row in rows]


def keys(claimed: list[Claimed]) -> list[tuple[str, str, int]]:
    return [(item.event_id, item.handler, item.attempts) for item in claimed]


@pytest.fixture
def prefix() -> str:
    # Each test its own keys: the server is shared by the whole module.
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def node(tmp_path: Path, redis_server: RedisServer, prefix: str) -> AsyncIterator[OpenNode]:
    """Opens spools ("receivers") on the shared server and prefix; closes them all after."""
    opened: list[RedisSpool] = []

    async def open_node(
        handler_timeout: str = "30s", url: str | None = None, stream_prefix: str | None = None
    ) -> RedisSpool:
        directory = tmp_path / f"node{len(opened)}"
        directory.mkdir()
        config = make_config(
            directory,
            config_text(url or redis_server.url, stream_prefix or prefix, handler_timeout),
        )
        spool = cast(RedisSpool, await open_spool(config))
        opened.append(spool)
        return spool

    yield open_node
    for spool in opened:
        await spool.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at the keys the way an operator would."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def finish_ok(spool: RedisSpool, item: Claimed, seconds: float = 0.25) -> None:
    await spool.finish(item.delivery_id, outcome="ok", seconds=seconds, error=None)


class TestAcceptClaimFinish:
    async def test_an_event_is_claimed_once_per_handler_and_done_when_both_succeed(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        spool.expect_handlers({"a": 30.0, "b": 30.0})
        heard: list[str] = []
        spool.on_new_work(lambda: heard.append("work"))
        event = incoming()

        accepted = await spool.accept(event, ["a", "b"])

        assert accepted == Accepted(event.id, duplicate=False, deliveries=2)
        assert heard == ["work"]
        assert (await spool.gauges())[0] == counts(pending=2)
        assert states(await spool.deliveries_of(event.id)) == [
            ("a", "pending", 0),
            ("b", "pending", 0),
        ]
        assert await raw.xlen(f"{prefix}:stream:default") == 1

        claimed = await spool.claim(10, {"a": 5, "b": 5})

        assert sorted(claimed, key=lambda item: item.handler) == [
            Claimed(
                delivery_id=f"{event.id} {handler} 1",
                event_id=event.id,
                handler=handler,
                attempts=1,
                source="default",
                body=event.body,
                timestamp=event.timestamp,
                received_at=event.received_at,
            )
            for handler in ("a", "b")
        ]
        assert (await spool.gauges())[0] == counts(running=2)
        assert await spool.claim(10, {"a": 5, "b": 5}) == [], "both are leased"

        for item in claimed:
            await finish_ok(spool, item)

        rows = await spool.deliveries_of(event.id)
        assert [
            {key: row[key] for key in ("id", "handler", "state", "attempts")}
            | {key: row[key] for key in ("last_outcome", "last_error", "last_seconds")}
            for row in rows
        ] == [
            {
                "id": f"{event.id} {handler}",
                "handler": handler,
                "state": "done",
                "attempts": 1,
                "last_outcome": "ok",
                "last_error": None,
                "last_seconds": 0.25,
            }
            for handler in ("a", "b")
        ]
        assert await spool.gauges() == (counts(done=2), 0.0)
        assert await raw.zscore(f"{prefix}:settled", event.id) is not None
        assert await spool.next_due(["a", "b"]) is None
        assert await spool.claim(10, {"a": 5, "b": 5}, now=time.time() + 3600) == []


class TestDuplicates:
    async def test_the_same_signed_request_is_a_duplicate_on_another_node(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        first_node, second_node = await node(), await node()
        first = incoming()
        assert await first_node.accept(first, ["h"]) == Accepted(first.id, False, 1)

        # A different body, so only the (source, timestamp, signature) check can match.
        retry = incoming(timestamp=first.timestamp, signature=first.signature)
        assert await second_node.accept(retry, ["h"]) == Accepted(first.id, True, 0)

        other_source = incoming(
            source="elsewhere", timestamp=first.timestamp, signature=first.signature
        )
        assert await second_node.accept(other_source, ["h"]) == Accepted(other_source.id, False, 1)
        assert await raw.zcard(f"{prefix}:events") == 2
        assert await raw.xlen(f"{prefix}:stream:default") == 1
        assert (await second_node.gauges())[0] == counts(pending=2)

    async def test_an_identical_body_joins_an_event_until_a_delivery_starts(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        first_node, second_node = await node(), await node()
        first = incoming()
        assert await first_node.accept(first, ["h1", "h2"]) == Accepted(first.id, False, 2)

        twin = incoming(body=first.body, timestamp=first.timestamp + 1)
        assert await second_node.accept(twin, ["h1", "h2"]) == Accepted(first.id, True, 0)
        # Another secret signed it: not the same sender, so not merged.
        other_secret = incoming(body=first.body, secret_id="1")
        assert await second_node.accept(other_secret, ["h1", "h2"]) == Accepted(
            other_secret.id, False, 2
        )

        [started] = await first_node.claim(1, {"h1": 1})
        assert keys([started]) == [(first.id, "h1", 1)]

        later = incoming(body=first.body)
        assert await second_node.accept(later, ["h1", "h2"]) == Accepted(later.id, False, 2)
        # The coalesced request's own signature still names the event it joined.
        assert await first_node.accept(twin, ["h1", "h2"]) == Accepted(first.id, True, 0)
        assert states(await first_node.deliveries_of(first.id)) == [
            ("h1", "running", 1),
            ("h2", "pending", 0),
        ]
        assert await raw.zcard(f"{prefix}:events") == 3
        assert (await first_node.gauges())[0] == counts(pending=5, running=1)


class TestRetries:
    async def test_a_failed_delivery_is_retried_when_due_alone_and_then_dead_lettered(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        spool.expect_handlers({"steady": 30.0, "flaky": 30.0})
        event = incoming()
        await spool.accept(event, ["steady", "flaky"])
        caps = {"steady": 5, "flaky": 5}
        t0 = time.time()

        claimed = {item.handler: item for item in await spool.claim(10, caps, now=t0)}
        assert sorted(claimed) == ["flaky", "steady"]
        await finish_ok(spool, claimed["steady"])
        await spool.finish(
            claimed["flaky"].delivery_id,
            outcome="error",
            seconds=0.5,
            error="boom",
            next_attempt_at=t0 + 100,
        )

        assert await spool.next_due(["flaky"]) == t0 + 100
        assert await spool.gauges(now=t0 + 99) == (counts(pending=1, done=1), 0.0)
        assert await spool.claim(10, caps, now=t0 + 99.9) == []
        assert await spool.gauges(now=t0 + 103) == (
            counts(pending=1, done=1),
            pytest.approx(3.0, abs=1e-6),
        )

        [retry] = await spool.claim(10, caps, now=t0 + 100)
        assert keys([retry]) == [(event.id, "flaky", 2)]
        rows = await spool.deliveries_of(event.id)
        assert states(rows) == [("steady", "done", 1), ("flaky", "running", 2)]
        assert rows[1]["last_error"] == "boom"
        assert rows[1]["last_outcome"] == "error"

        await spool.finish(
            retry.delivery_id, outcome="error", seconds=0.5, error="gave up", dead=True
        )

        rows = await spool.deliveries_of(event.id)
        assert states(rows) == [("steady", "done", 1), ("flaky", "dead", 2)]
        assert rows[1]["last_error"] == "gave up"
        dead = await raw.xrange(f"{prefix}:dead")
        assert len(dead) == 1
        letter = dead[0][1]
        assert {key: letter[key] for key in ("event_id", "handler", "error", "attempts")} == {
            "event_id": event.id,
            "handler": "flaky",
            "error": "gave up",
            "attempts": "2",
        }
        assert await raw.hget(f"{prefix}:event:{event.id}", "flaky|dead_entry") == dead[0][0]
        assert await spool.gauges(now=t0 + 200) == (counts(done=1, dead=1), 0.0)
        assert await spool.claim(10, caps, now=t0 + 10_000) == []
        assert await raw.zscore(f"{prefix}:settled", event.id) is None


class TestNodes:
    async def test_two_nodes_claiming_at_once_never_share_a_delivery(self, node: OpenNode):
        nodes = [await node(), await node()]
        events = [incoming() for _ in range(60)]
        for index, event in enumerate(events):
            await nodes[index % 2].accept(event, ["a", "b"])
        caps = {"a": 3, "b": 3}

        rounds = await asyncio.gather(*(nodes[i % 2].claim(4, caps) for i in range(40)))
        claimed = [item for got in rounds for item in got]
        assert all(len(got) <= 4 for got in rounds)
        # Whatever the concurrent calls left, a sequential drain picks up (bounded: a spool
        # handing out running deliveries again would never run dry).
        for _ in range(10):
            if not (got := await nodes[0].claim(50, {"a": 50, "b": 50})):
                break
            claimed += got

        ids = [item.delivery_id for item in claimed]
        assert len(ids) == len(set(ids)), "a delivery was handed out twice"
        assert sorted(ids) == sorted(f"{e.id} {h} 1" for e in events for h in ("a", "b"))
        assert {item.attempts for item in claimed} == {1}
        assert (await nodes[1].gauges())[0] == counts(running=120)

    async def test_a_dead_nodes_claim_runs_out_and_its_late_answers_are_weighed(
        self, node: OpenNode
    ):
        dying, survivor = await node(), await node()
        dying.expect_handlers({"h": 1.0})
        event = incoming()
        await dying.accept(event, ["h"])
        t0 = time.time()

        [first] = await dying.claim(1, {"h": 1}, now=t0)
        assert first.attempts == 1
        assert await dying.next_due(["h"]) == pytest.approx(t0 + 1.0 + LEASE_GRACE, abs=1e-5)
        assert await survivor.claim(1, {"h": 1}, now=t0 + 1.0 + LEASE_GRACE - 0.1) == []

        [second] = await survivor.claim(1, {"h": 1}, now=t0 + 1.0 + LEASE_GRACE + 0.1)
        assert (second.event_id, second.handler, second.attempts) == (event.id, "h", 2)
        assert second.delivery_id != first.delivery_id  # each attempt its own handle
        assert (await survivor.gauges())[0] == counts(running=1)

        # Attempt 1 failing late must not undo attempt 2, which owns the delivery now.
        await dying.finish(
            first.delivery_id, outcome="error", seconds=1.0, error="late", next_attempt_at=t0
        )
        rows = await survivor.deliveries_of(event.id)
        assert states(rows) == [("h", "running", 2)]
        assert rows[0]["last_outcome"] is None
        assert (await survivor.gauges())[0] == counts(running=1)

        # The work is done, whoever did it.
        await finish_ok(dying, first, seconds=7.0)
        rows = await survivor.deliveries_of(event.id)
        assert states(rows) == [("h", "done", 2)]
        assert (rows[0]["last_outcome"], rows[0]["last_seconds"]) == ("ok", 7.0)
        assert (await survivor.gauges())[0] == counts(done=1)

        # The survivor, stopping, cuts its call short: the delivery is done all the same.
        await survivor.release([second.delivery_id])
        assert states(await survivor.deliveries_of(event.id)) == [("h", "done", 2)]
        assert (await survivor.gauges())[0] == counts(done=1)

    async def test_a_receiver_that_claims_its_own_lapsed_delivery_again_keeps_them_apart(
        self, node: OpenNode
    ):
        spool = await node()
        spool.expect_handlers({"h": 1.0})
        event = incoming()
        await spool.accept(event, ["h"])
        t0 = time.time()
        [first] = await spool.claim(1, {"h": 1}, now=t0)
        [second] = await spool.claim(1, {"h": 1}, now=t0 + 1.0 + LEASE_GRACE + 0.1)
        assert (first.attempts, second.attempts) == (1, 2)

        # The first call's late failure is the first call's: the second still owns it ...
        await spool.finish(first.delivery_id, outcome="error", seconds=1.0, error="late")
        assert states(await spool.deliveries_of(event.id)) == [("h", "running", 2)]
        # ... and the second call's own failure is recorded, as attempt 2.
        await spool.finish(
            second.delivery_id, outcome="error", seconds=1.0, error="own", next_attempt_at=t0
        )
        [row] = await spool.deliveries_of(event.id)
        assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 2, "own")

    async def test_a_late_success_leaves_a_dead_letter_dead(self, node: OpenNode):
        dying, survivor = await node(), await node()
        dying.expect_handlers({"h": 1.0})
        event = incoming()
        await dying.accept(event, ["h"])
        t0 = time.time()
        [first] = await dying.claim(1, {"h": 1}, now=t0)
        [second] = await survivor.claim(1, {"h": 1}, now=t0 + 1.0 + LEASE_GRACE + 0.1)
        await survivor.finish(
            second.delivery_id, outcome="error", seconds=1.0, error="gave up", dead=True
        )

        await finish_ok(dying, first)

        rows = await survivor.deliveries_of(event.id)
        assert states(rows) == [("h", "dead", 2)]
        assert (rows[0]["last_outcome"], rows[0]["last_error"]) == ("error", "gave up")
        assert (await survivor.gauges())[0] == counts(dead=1)

    async def test_entries_a_dead_node_read_are_taken_over_once_idle_past_every_lease(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        accepting, survivor = await node(), await node()
        survivor.expect_handlers({"h": 0.01})
        events = [incoming() for _ in range(3)]
        for event in events:
            await accepting.accept(event, ["h"])
        stream = f"{prefix}:stream:default"
        read = await raw.xreadgroup(GROUP, "dead-node", {stream: ">"}, count=10)
        entry_ids = [entry_id for entry_id, _ in read[0][1]]
        assert len(entry_ids) == 3
        idle_needed_ms = int(1000 * (0.01 + LEASE_GRACE))

        async def age_entries(idle_ms: int) -> None:
            # XCLAIM to the same consumer with IDLE backdates the entries: exactly what
            # XAUTOCLAIM sees after that long, without waiting for it.
            await raw.xclaim(stream, GROUP, "dead-node", 0, entry_ids, idle=idle_ms)

        t0 = time.time()
        await age_entries(idle_needed_ms - 1000)
        assert await survivor.claim(10, {"h": 10}, now=t0) == []
        assert (await raw.xpending(stream, GROUP))["pending"] == 3

        await age_entries(idle_needed_ms + 1000)
        with capture_logs() as logs:
            # Takeovers are throttled to one a second of the claim's clock.
            claimed = await survivor.claim(10, {"h": 10}, now=t0 + 2)

        assert sorted(keys(claimed)) == sorted((e.id, "h", 1) for e in events)
        pending = await raw.xpending(stream, GROUP)
        assert pending["pending"] == 0
        assert [
            (line["event"], line["count"]) for line in logs if line["log_level"] == "warning"
        ] == [("took over stream entries of a receiver that stopped", 3)]
        assert (await survivor.gauges())[0] == counts(running=3)

    async def test_the_oldest_pending_age_counts_entries_no_node_has_read_yet(self, node: OpenNode):
        receiver, idle = await node(), await node()
        await receiver.accept(incoming(), ["h"])
        later = time.time() + 100
        # Nobody claimed: the event is only in the stream, yet it is waiting.
        states_now, age = await idle.gauges(now=later)
        assert states_now == counts(pending=1)
        assert 99 <= age <= 101
        [item] = await idle.claim(10, {"h": 10})
        await finish_ok(idle, item)
        assert await idle.gauges(now=later) == (counts(done=1), 0.0)


class TestReleaseAndCaps:
    async def test_a_released_delivery_is_due_at_once_for_any_node(self, node: OpenNode):
        stopping, other = await node(), await node()
        event = incoming()
        await stopping.accept(event, ["h"])
        [item] = await stopping.claim(1, {"h": 1})
        assert await other.claim(1, {"h": 1}) == []

        await stopping.release([item.delivery_id])

        assert states(await other.deliveries_of(event.id)) == [("h", "pending", 1)]
        assert (await other.gauges())[0] == counts(pending=1)
        [again] = await other.claim(1, {"h": 1})
        assert keys([again]) == [(event.id, "h", 2)]
        assert (await other.gauges())[0] == counts(running=1)

        # Its lease ran out and the first node took it over: the second node's release,
        # arriving late, must not make the newer attempt's delivery pending.
        [third] = await stopping.claim(1, {"h": 1}, now=time.time() + 30 + LEASE_GRACE + 1)
        assert keys([third]) == [(event.id, "h", 3)]
        await other.release([again.delivery_id])
        assert states(await other.deliveries_of(event.id)) == [("h", "running", 3)]
        assert (await other.gauges())[0] == counts(running=1)


class TestPurge:
    async def test_only_events_settled_long_enough_are_deleted_with_their_entries(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        done, waiting, dead = incoming(), incoming(), incoming()
        await spool.accept(done, ["h"])
        await spool.accept(waiting, ["h", "g"])
        await spool.accept(dead, ["h"])
        entries = {
            event.id: await raw.hget(f"{prefix}:event:{event.id}", "entry")
            for event in (done, waiting, dead)
        }
        stream = f"{prefix}:stream:default"
        claimed = {item.event_id: item for item in await spool.claim(10, {"h": 10})}
        await finish_ok(spool, claimed[done.id])
        await finish_ok(spool, claimed[waiting.id])
        await spool.finish(
            claimed[dead.id].delivery_id, outcome="error", seconds=1.0, error="no", dead=True
        )

        assert await spool.purge_done(3600) == 0
        assert await spool.purge_done(0) == 1

        assert await spool.deliveries_of(done.id) == []
        assert await raw.exists(f"{prefix}:event:{done.id}") == 0
        assert await raw.xrange(stream, entries[done.id], entries[done.id]) == []
        for kept in (waiting, dead):
            assert [e for e, _ in await raw.xrange(stream, entries[kept.id], entries[kept.id])] == [
                entries[kept.id]
            ]
        assert states(await spool.deliveries_of(waiting.id)) == [
            ("h", "done", 1),
            ("g", "pending", 0),
        ]
        assert (await spool.gauges())[0] == counts(pending=1, done=1, dead=1)
        assert await raw.zcard(f"{prefix}:events") == 2

        [last] = await spool.claim(10, {"g": 1})
        await finish_ok(spool, last)
        assert await spool.purge_done(0) == 1
        assert await raw.xlen(stream) == 1
        assert (await spool.gauges())[0] == counts(dead=1)

    async def test_an_event_no_handler_wanted_is_purged_and_does_not_block_later_ones(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        unwanted, wanted = incoming(), incoming()
        await spool.accept(unwanted, [])  # settled at once, with nothing done
        await spool.accept(wanted, ["h"])
        [item] = await spool.claim(10, {"h": 10})
        await finish_ok(spool, item)

        assert await spool.purge_done(0) == 2
        assert await raw.zcard(f"{prefix}:settled") == 0
        assert await raw.xlen(f"{prefix}:stream:default") == 0
        assert (await spool.gauges())[0] == counts()

    async def test_seen_requests_outlive_their_events_until_the_replay_window_passes(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        now = time.time()
        late = incoming(timestamp=int(now) - 200)
        early = incoming(timestamp=int(now) - 400)
        for event in (late, early):
            await spool.accept(event, [])
        seen = {e.id: f"{prefix}:seen:default:{e.timestamp}:{e.signature}" for e in (late, early)}
        assert {await raw.ttl(key) for key in seen.values()} == {-1}

        assert await spool.purge_done(0, replay_window=300) == 2  # both events go

        assert await raw.exists(seen[late.id]) == 1
        assert await raw.exists(seen[early.id]) == 0
        assert await raw.zrange(f"{prefix}:seen_at", 0, -1) == [seen[late.id].split(":", 2)[2]]
        replay = incoming(late.body, timestamp=late.timestamp, signature=late.signature)
        assert await spool.accept(replay, []) == Accepted(late.id, True, 0)
        replay = incoming(early.body, timestamp=early.timestamp, signature=early.signature)
        assert await spool.accept(replay, []) == Accepted(replay.id, False, 0)

    async def test_consumers_gone_with_nothing_pending_are_dropped_from_the_group(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        await spool.accept(incoming(), ["h"])
        await spool.accept(incoming(), ["h"])
        stream = f"{prefix}:stream:default"
        # Two receivers that stopped: one read an entry it never scheduled, one read nothing.
        await raw.xreadgroup("frameiod", "holding", {stream: ">"}, count=1)
        await spool.claim(10, {"h": 10})  # this node reads the other one, and schedules it
        await raw.xgroup_createconsumer(stream, "frameiod", "empty")
        names = {str(c["name"]) for c in await raw.xinfo_consumers(stream, "frameiod")}
        assert names == {"holding", "empty", spool.node}
        spool.forget_consumers_after = -1.0  # any idle time: "empty" was made just now
        await spool.purge_done(3600)
        names = {str(c["name"]) for c in await raw.xinfo_consumers(stream, "frameiod")}
        assert names == {"holding", spool.node}


class TestRedisDown:
    async def test_an_unreachable_redis_refuses_to_open_without_showing_the_password(
        self, node: OpenNode
    ):
        port = free_port()
        with pytest.raises(SpoolError) as caught:
            await node(url=f"redis://:hunter2@127.0.0.1:{port}/0")
        assert f"redis://:***@127.0.0.1:{port}/0" in str(caught.value)
        assert "hunter2" not in str(caught.value)

    async def test_a_redis_outage_is_unavailable_and_the_spool_reconnects_after(
        self, tmp_path: Path
    ):
        server = RedisServer(tmp_path / "redis")
        server.start()
        try:
            admin = aioredis.Redis.from_url(server.url)
            await admin.config_set("requirepass", "hunter2")
            await admin.aclose()
            url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
            config = make_config(tmp_path, config_text(url, "down"))
            spool = await open_spool(config)
            try:
                before = incoming()
                await spool.accept(before, ["h"])
                await asyncio.to_thread(server.stop)

                failures = []
                for call in (
                    lambda: spool.accept(incoming(), ["h"]),
                    lambda: spool.claim(1, {"h": 1}),
                    spool.gauges,
                    spool.check,
                ):
                    with pytest.raises(SpoolUnavailable) as caught:
                        await call()
                    failures.append(caught.value)
                for failure in failures:
                    assert failure.reason == "redis_unavailable"
                    assert f"Redis at redis://:***@127.0.0.1:{server.port}/0 " in failure.detail
                    assert "hunter2" not in failure.detail
                    assert "hunter2" not in str(failure)

                await asyncio.to_thread(server.start)
                # The password was set at run time; the restarted server needs it again.
                admin = aioredis.Redis.from_url(server.url)
                await admin.config_set("requirepass", "hunter2")
                await admin.aclose()

                assert await spool.check() is None
                after = incoming()
                assert await spool.accept(after, ["h"]) == Accepted(after.id, False, 1)
                claimed = await spool.claim(10, {"h": 10})
                assert sorted(keys(claimed)) == sorted([(before.id, "h", 1), (after.id, "h", 1)])
            finally:
                await spool.close()
        finally:
            server.stop()


class TestReadiness:
    async def test_a_redis_that_answers_but_refuses_writes_is_not_ready(self, tmp_path: Path):
        server = RedisServer(tmp_path / "redis")
        server.start()
        admin = aioredis.Redis.from_url(server.url)
        try:
            spool = await open_spool(make_config(tmp_path, config_text(server.url, "ro")))
            try:
                assert await spool.check() is None
                # A replica (of nothing reachable): read-only, as after a failover.
                await admin.replicaof("127.0.0.1", free_port())
                assert await admin.ping()
                with pytest.raises(SpoolUnavailable) as caught:
                    await spool.check()
                assert caught.value.reason == "redis_refused"
                assert "read only replica" in caught.value.detail
                await admin.replicaof("NO", "ONE")
                assert await spool.check() is None
            finally:
                await spool.close()
        finally:
            await admin.aclose()
            server.stop()

    def test_readyz_gives_up_before_a_redis_command_does(self):
        # Else a Redis that hangs would read as unreachable, not as slow.
        assert READY_CHECK_SECONDS < redis_store._SOCKET_TIMEOUT


class TestPersistenceWarnings:
    @staticmethod
    def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [line for line in logs if line["log_level"] == "warning"]

    async def test_appendfsync_everysec_is_warned_about(self, tmp_path: Path, node: OpenNode):
        server = RedisServer(tmp_path / "redis", appendfsync="everysec")
        server.start()
        try:
            with capture_logs() as logs:
                await node(url=server.url)
            [warning] = self.warnings(logs)
            assert "appendfsync always" in warning["event"]
            assert warning["appendfsync"] == "everysec"
            assert warning["redis"] == server.url

            admin = aioredis.Redis.from_url(server.url)
            await admin.config_set("appendonly", "no")
            await admin.aclose()
            with capture_logs() as logs:
                await node(url=server.url)
            [warning] = self.warnings(logs)
            assert "set appendonly yes" in warning["event"]
        finally:
            server.stop()

    async def test_a_policy_that_evicts_keys_is_warned_about(self, tmp_path: Path, node: OpenNode):
        server = RedisServer(tmp_path / "redis")
        server.start()
        try:
            admin = aioredis.Redis.from_url(server.url)
            await admin.config_set("maxmemory-policy", "allkeys-lru")
            await admin.aclose()
            with capture_logs() as logs:
                await node(url=server.url)
            [warning] = self.warnings(logs)
            assert "maxmemory-policy noeviction" in warning["event"]
            assert warning["maxmemory_policy"] == "allkeys-lru"
        finally:
            server.stop()

    async def test_appendfsync_always_is_not_warned_about(self, node: OpenNode):
        with capture_logs() as logs:
            await node()
        assert self.warnings(logs) == []


class TestSourceLimiter:
    async def test_three_nodes_share_one_bucket_per_source(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str, redis_server: RedisServer
    ):
        limits = {"default": (5.0, 5)}
        nodes = [await node() for _ in range(3)]
        limiters = [RedisSourceLimiter(n.client, redis_server.url, prefix, limits) for n in nodes]

        started = time.monotonic()
        waits = [await limiters[i % 3].take("default") for i in range(40)]
        elapsed = time.monotonic() - started

        passed = waits.count(0.0)
        assert 5 <= passed <= 5 + 5 * elapsed + 1, (passed, elapsed)
        refused = [wait for wait in waits if wait > 0]
        assert len(refused) == 40 - passed
        assert all(wait <= 1 / 5 + 1e-6 for wait in refused), refused
        assert waits[:5] == [0.0] * 5, "a full bucket lets a burst through"

        for limiter in limiters:
            assert [await limiter.take("unconfigured") for _ in range(10)] == [0.0] * 10
        assert await raw.exists(f"{prefix}:rate:unconfigured") == 0
        assert await raw.exists(f"{prefix}:rate:default") == 1

    async def test_a_batch_of_accepts_takes_its_tokens_from_the_bucket_takes_use(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str, redis_server: RedisServer
    ):
        spool = await node()
        limiter = RedisSourceLimiter(spool.client, redis_server.url, prefix, {"default": (1.0, 4)})
        assert limiter.taken_on_accept("default") == (1.0, 4)
        assert limiter.taken_on_accept("unconfigured") is None
        assert await limiter.take("default") == 0.0  # one of the four tokens, spent apart
        events = [incoming(limit=(1.0, 4)) for _ in range(6)]

        answers = await asyncio.gather(
            *(spool.accept(event, ["a"]) for event in events), return_exceptions=True
        )

        accepted = [a for a in answers if isinstance(a, Accepted)]
        limited = [a for a in answers if isinstance(a, RateLimited)]
        assert [a.id for a in accepted] == [e.id for e in events[:3]], "first come, first served"
        assert len(limited) == 3
        assert all(0 < a.wait <= 1.0 for a in limited), [a.wait for a in limited]
        assert await raw.zcard(f"{prefix}:events") == 3, "a refused request stores nothing"
        assert (await spool.gauges())[0] == counts(pending=3)
        assert await limiter.take("default") > 0, "the batch emptied the shared bucket"


class TestBatches:
    async def test_the_accepts_of_one_loop_turn_are_one_script_call(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        await spool.accept(incoming(), ["a"])  # loads the script into Redis
        await raw.config_resetstat()
        twin = incoming()
        events = [incoming() for _ in range(20)] + [twin, incoming(body=twin.body)]

        answers = await asyncio.gather(*(spool.accept(event, ["a"]) for event in events))

        calls = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert calls == 1, f"{calls} script calls for {len(events)} accepts"
        assert answers[:21] == [Accepted(e.id, duplicate=False, deliveries=1) for e in events[:21]]
        assert answers[21] == Accepted(twin.id, duplicate=True, deliveries=0), (
            "a twin later in the same batch joins the pending one"
        )
        assert await raw.zcard(f"{prefix}:events") == 22
        assert (await spool.gauges())[0] == counts(pending=22)

    async def test_the_outcomes_of_one_loop_turn_are_one_script_call(
        self, node: OpenNode, raw: aioredis.Redis
    ):
        spool = await node()
        spool.expect_handlers({"a": 30.0})
        await asyncio.gather(*(spool.accept(incoming(), ["a"]) for _ in range(10)))
        claimed = await spool.claim(10, {"a": 10})
        assert len(claimed) == 10
        await finish_ok(spool, claimed[0])  # loads the script into Redis
        await raw.config_resetstat()

        await asyncio.gather(*(finish_ok(spool, item) for item in claimed[1:]))

        calls = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert calls == 1, f"{calls} script calls for 9 outcomes"
        assert (await spool.gauges())[0] == counts(done=10)

    async def test_a_batch_redis_refuses_fails_every_request_in_it(
        self, node: OpenNode, raw: aioredis.Redis, prefix: str
    ):
        spool = await node()
        await raw.config_set("min-replicas-to-write", 1)  # a primary without its replica
        try:
            answers = await asyncio.gather(
                *(spool.accept(incoming(), ["a"]) for _ in range(5)), return_exceptions=True
            )
        finally:
            await raw.config_set("min-replicas-to-write", 0)
        assert [type(a) for a in answers] == [SpoolUnavailable] * 5
        assert {a.reason for a in answers if isinstance(a, SpoolUnavailable)} == {"redis_refused"}
        assert len({id(a) for a in answers}) == 5, "one exception per request"
        assert await raw.zcard(f"{prefix}:events") == 0
        # Nothing is left waiting: the next requests go through.
        assert (await spool.accept(incoming(), ["a"])).deliveries == 1


class TestCancellation:
    async def test_a_task_cancelled_while_it_waits_for_redis_stops(self, node: OpenNode):
        # A daemon stopped moments after its start cancels its maintenance task in the
        # middle of a Redis call: the task must end, or the stop waits for it forever.
        spool = await node()

        async def poll() -> None:
            while True:
                await spool.gauges()

        for attempt in range(30):
            task = asyncio.create_task(poll())
            await asyncio.sleep(0.0005 * (attempt % 9))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, f"attempt {attempt}: the cancelled task went on polling"
            assert task.cancelled()
