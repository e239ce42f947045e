"""The store's contract: the daemon's upkeep (purging what is done, the gauges, the
readiness check) and closing (see `store_contract`)."""

from __future__ import annotations

import asyncio
import time

import pytest
from store_contract import (
    DAY,
    Backend,
    claim_confirmed,
    counts,
    finish_ok,
    states,
)
from support import incoming

from frameiod import idle
from frameiod.config import load_config
from frameiod.store.base import Accepted, SpoolBackend, SpoolUnavailable
from frameiod.store.open import open_backend

# Its fixtures: `backend`, `store`, `filled` and `shared`.
pytest_plugins = ["store_contract"]


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


class TestHandOver:
    async def test_the_hand_over_in_force_is_said(self, backend: Backend):
        """Writes are held for an idle loop only on a loop that can call back; the start-up
        log says which (`Backend.handover`)."""

        async def opened_with_the_daemons_hand_over() -> str:
            opened = await open_backend(
                load_config(backend.config, environ={}), idle.call_when_idle
            )
            await opened.spool.close()
            return opened.handover

        assert await opened_with_the_daemons_hand_over() == "loop idle"
        # A plain asyncio loop: the hand-over cannot serve it, and the store does not pretend.
        elsewhere = await asyncio.to_thread(asyncio.run, opened_with_the_daemons_hand_over())
        assert elsewhere == "immediate"
