"""Fresh deliveries on SQLite: claimed in their accept's own transaction when a worker is
free and nothing older waits, so the handler starts one commit sooner; otherwise pending
and claimed in order, as before."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from frameiod import WebhookEvent
from frameiod.dispatch.dispatcher import Dispatcher
from frameiod.plugins.handlers import WebhookHandler
from frameiod.plugins.routing import Routes
from frameiod.store.base import Claimed, Incoming
from frameiod.store.sqlite import Spool

REQUEST = contextvars.ContextVar("request", default="none")


def _incoming(event_id: str) -> Incoming:
    # A body and signature of its own: the spool would take it for a duplicate otherwise.
    body = json.dumps({"type": "file.ready", "resource": {"id": event_id}}).encode()
    return Incoming(event_id, "default", "file.ready", body, 1, f"v0={event_id}", "0", time.time())


class _Claims(Spool):
    """The real spool, counting what the dispatcher's claims found, and saying when one
    has returned."""

    found = 0
    looked: asyncio.Event

    async def claim(self, limit, caps, now=None):  # type: ignore[no-untyped-def]
        got = await super().claim(limit, caps, now)
        self.found += len(got)
        self.looked.set()
        return got


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[_Claims]:
    spool = await _Claims.open(tmp_path / "spool.db")
    spool.looked = asyncio.Event()
    yield spool
    await spool.close()


Start = Callable[[WebhookHandler], Dispatcher]


def _recording(concurrency: int | None = None) -> tuple[list[str], WebhookHandler]:
    """A handler noting the id of each event it is called with, and its notes."""
    called: list[str] = []

    async def record(event: WebhookEvent) -> None:
        called.append(event.event_id or "")

    handler = WebhookHandler(
        func=record, event_types=("file.ready",), plugin="p", concurrency=concurrency
    )
    return called, handler


class _Hold:
    """An operation that holds the spool's writer thread, inside its batch, until let go."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, conn: object) -> None:
        self.entered.set()
        self.release.wait(10)

    async def reached(self) -> None:
        """Wait until the writer runs this operation."""
        await asyncio.to_thread(self.entered.wait, 10)


@pytest.fixture
async def start(spool: _Claims) -> AsyncIterator[Start]:
    """Starts a dispatcher for a handler on ``spool``; each is stopped at the end."""
    running: list[tuple[Dispatcher, asyncio.Task[None]]] = []

    def start(handler: WebhookHandler) -> Dispatcher:
        dispatcher = Dispatcher(spool, Routes([handler]))
        running.append((dispatcher, asyncio.create_task(dispatcher.run())))
        return dispatcher

    yield start
    for dispatcher, scheduler in running:
        await dispatcher.stop(drain_timeout=1.0)
        await scheduler


class TestStartedInTheAccept:
    async def test_a_fresh_delivery_starts_after_its_accept_commits_and_no_claim(
        self, spool: _Claims, start: Start
    ):
        claims_at_start: list[int] = []

        async def record(event: WebhookEvent) -> None:
            claims_at_start.append(spool.found)

        handler = WebhookHandler(func=record, event_types=("file.ready",), plugin="p")
        dispatcher = start(handler)
        await spool.looked.wait()  # its first claim found nothing waiting
        accepted = await spool.accept(_incoming("e1"), [handler.key])
        outcomes = await dispatcher.wait_for("e1", settled=True)
        rows = await spool.deliveries_of("e1")
        assert accepted.deliveries == 1
        assert [item.handler for item in accepted.started] == [handler.key]
        # Called once the accept's transaction was on record, with no claim in between.
        assert claims_at_start == [0]
        assert spool.found == 0
        assert [o.status for o in outcomes] == ["ok"]
        assert [(r["state"], r["attempts"], r["last_outcome"]) for r in rows] == [("done", 1, "ok")]

    async def test_the_call_does_not_run_in_the_accepting_requests_context(
        self, spool: _Claims, start: Start
    ):
        seen: list[str] = []

        async def record(event: WebhookEvent) -> None:
            seen.append(REQUEST.get())

        handler = WebhookHandler(func=record, event_types=("file.ready",), plugin="p")
        dispatcher = start(handler)
        await spool.looked.wait()

        async def request() -> None:
            REQUEST.set("request e1")  # what a request's middleware or span would set
            accepted = await spool.accept(_incoming("e1"), [handler.key])
            assert len(accepted.started) == 1

        await asyncio.create_task(request())
        await dispatcher.wait_for("e1", settled=True)
        assert seen == ["none"]


class TestOlderWorkFirst:
    async def test_while_older_deliveries_wait_a_fresh_one_waits_behind_them(
        self, spool: _Claims, start: Start
    ):
        order, handler = _recording(concurrency=1)
        # Accepted before the dispatcher runs, as a restart finds them.
        for event_id in ("e1", "e2"):
            await spool.accept(_incoming(event_id), [handler.key])
        dispatcher = start(handler)
        await asyncio.sleep(0)  # the scheduler runs, and its first claim is on its way
        fresh = await spool.accept(_incoming("e3"), [handler.key])
        for event_id in ("e1", "e2", "e3"):
            await dispatcher.wait_for(event_id, settled=True)
        # A free worker, but older work waiting: e3 was written pending and claimed last.
        assert fresh.started == ()
        assert order == ["e1", "e2", "e3"]


class _Taker:
    """Reserves every handler, and notes what it is handed."""

    def __init__(self) -> None:
        self.taken: list[tuple[list[str], list[Claimed]]] = []

    def reserve(self, handlers: Sequence[str]) -> list[str]:
        return list(handlers)

    def take(self, reserved: Sequence[str], started: Sequence[Claimed]) -> None:
        self.taken.append((list(reserved), list(started)))


class TestAnAcceptGivenUp:
    async def test_a_claim_written_for_a_request_given_up_is_made_pending_again(
        self, spool: _Claims
    ):
        taker = _Taker()
        spool.hand_fresh_to(taker)
        heard: list[str] = []
        spool.on_new_work(lambda: heard.append("work"))
        first, second = _Hold(), _Hold()
        # The writer is held in one batch while the accept and a second hold queue up:
        # the next batch runs the accept, then waits, before it commits.
        blocker = spool.run(first)
        await first.reached()
        accepting = asyncio.create_task(spool.accept(_incoming("e1"), ["p:h"]))
        await asyncio.sleep(0)  # the accept's job is queued
        after = spool.run(second)
        first.release.set()
        await blocker
        await second.reached()
        # The accept's insert has run in the open transaction: now its request gives up.
        accepting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accepting
        second.release.set()
        await after
        rows = await spool.deliveries_of("e1")
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 0)]
        assert taker.taken == [(["p:h"], [])]
        assert heard == ["work"]

    async def test_a_duplicate_lets_the_reserved_workers_go(self, spool: _Claims):
        taker = _Taker()
        spool.hand_fresh_to(taker)
        await spool.accept(_incoming("e1"), ["p:h"])
        duplicate = await spool.accept(_incoming("e1"), ["p:h"])
        assert duplicate.duplicate
        assert [(reserved, len(started)) for reserved, started in taker.taken] == [
            (["p:h"], 1),
            (["p:h"], 0),
        ]


class TestAStopMeanwhile:
    async def test_a_delivery_claimed_by_an_accept_that_ends_after_a_stop_is_given_back(
        self, spool: _Claims, start: Start
    ):
        called, handler = _recording()
        dispatcher = start(handler)
        await spool.looked.wait()
        hold = _Hold()
        # The writer is held while the accept, its delivery reserved, waits for its turn.
        blocker = spool.run(hold)
        await hold.reached()
        accepting = asyncio.create_task(spool.accept(_incoming("e1"), [handler.key]))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(dispatcher.stop(drain_timeout=1.0))
        await asyncio.sleep(0)
        hold.release.set()
        await blocker
        accepted = await accepting
        assert await stopping == 0
        rows = await spool.deliveries_of("e1")
        assert len(accepted.started) == 1  # written claimed, then handed to a stopped taker
        assert called == []
        # Pending again for the next start; its attempt counted, as for any call cut short.
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 1)]
