"""The store's contract: claiming due deliveries, finishing them, releasing them, and a
process killed mid-delivery (see `store_contract`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from store_contract import (
    LATER,
    Backend,
    claim_confirmed,
    counts,
    finish_ok,
    keys,
    states,
)
from support import incoming

from frameiod.store.base import SpoolBackend

# Its fixtures: `backend`, `store`, `filled` and `shared`.
pytest_plugins = ["store_contract"]


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

    async def test_the_trace_context_stored_with_an_event_comes_back_with_each_claim(
        self, store: SpoolBackend
    ):
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        now = time.time()
        traced = incoming(received_at=now - 20, trace_context=trace)
        plain = incoming(received_at=now - 10)
        await store.accept(traced, ["h", "g"])
        await store.accept(plain, ["h"])
        claimed = await store.claim(10, {"h": 10, "g": 10}, now=now)
        assert {(c.event_id, c.handler, c.trace_context) for c in claimed} == {
            (traced.id, "h", trace),
            (traced.id, "g", trace),
            (plain.id, "h", None),
        }

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
from store_contract import open_store


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
