"""Delivery through the spool: retries per handler, timeouts, dead letters, replay, caps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import run_cli

from frameiod import App, WebhookEvent
from frameiod.dispatch.dispatcher import Dispatcher
from frameiod.dispatch.retry import RetryPolicy
from frameiod.plugins.handlers import WebhookHandler
from frameiod.plugins.routing import Routes
from frameiod.store.base import Incoming, SpoolUnavailable
from frameiod.store.sqlite import Spool
from frameiod.testing import TEST_SECRET, RunningDaemon, run_daemon

# Retries in milliseconds, so the tests run in a blink.
FAST = """
[dispatch]
backoff_initial = "10ms"
backoff_max = "40ms"
max_attempts = 3
"""


async def _states(daemon: RunningDaemon, event_id: str) -> dict[str, tuple[str, int]]:
    assert daemon.daemon.spool is not None
    rows = await daemon.daemon.spool.deliveries_of(event_id)
    return {row["handler"]: (row["state"], row["attempts"]) for row in rows}


class TestRetries:
    async def test_a_handler_failing_twice_then_succeeding_runs_three_times_alone(self):
        app = App()
        calls = {"flaky": 0, "sibling": 0}

        @app.on_webhook("file.ready")
        async def flaky(event: WebhookEvent) -> None:
            calls["flaky"] += 1
            if calls["flaky"] <= 2:
                raise ConnectionError(f"storage unreachable ({calls['flaky']})")

        @app.on_webhook("file.ready")
        async def sibling(event: WebhookEvent) -> None:
            calls["sibling"] += 1

        with capture_logs() as logs:
            async with run_daemon({"p": app}, settings=FAST) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                await daemon.wait_for(sent.id, settled=True)
                states = await _states(daemon, sent.id)
        assert calls == {"flaky": 3, "sibling": 1}
        assert states == {"p:flaky": ("done", 3), "p:sibling": ("done", 1)}
        failures = [e for e in logs if e["event"] == "handler failed"]
        assert [(e["attempt"], e["error"]) for e in failures] == [
            (1, "ConnectionError: storage unreachable (1)"),
            (2, "ConnectionError: storage unreachable (2)"),
        ]

    async def test_a_hanging_handler_is_timed_out_and_retried(self):
        app = App()
        attempts: list[int] = []

        @app.on_webhook("file.ready", timeout=0.2)
        async def slow_once(event: WebhookEvent) -> None:
            attempts.append(len(attempts) + 1)
            if len(attempts) == 1:
                await asyncio.Event().wait()  # hangs until cancelled by the timeout

        async with run_daemon({"p": app}, settings=FAST) as daemon:
            sent = await daemon.send("file.ready", wait=False)
            first = await daemon.wait_for(sent.id)
            final = await daemon.wait_for(sent.id, settled=True)
        assert attempts == [1, 2]
        assert first[0].status in ("timeout", "ok")  # the retry may already have run
        assert [o.status for o in final] == ["ok"]

    async def test_the_deadline_and_a_timeout_error_of_the_handler_s_own_are_told_apart(self):
        app = App()

        @app.on_webhook("file.ready", timeout=0.2, max_attempts=1)
        async def hangs(event: WebhookEvent) -> None:
            await asyncio.Event().wait()

        @app.on_webhook("file.ready", timeout=5, max_attempts=1)
        async def gives_up_itself(event: WebhookEvent) -> None:
            raise TimeoutError("upstream took too long")

        async with run_daemon({"p": app}, settings=FAST) as daemon:
            sent = await daemon.send("file.ready", wait=False)
            outcomes = await daemon.wait_for(sent.id, settled=True)
            states = await _states(daemon, sent.id)
        assert sorted((o.status, o.error) for o in outcomes) == [
            ("dead", "TimeoutError: upstream took too long"),
            ("dead", "no answer within 0.2s"),
        ]
        assert states == {"p:hangs": ("dead", 1), "p:gives_up_itself": ("dead", 1)}

    async def test_calls_are_cut_off_within_a_tenth_of_their_timeout_async_or_not(self):
        app = App()
        release = threading.Event()

        @app.on_webhook("file.ready", timeout=0.3, max_attempts=1)
        async def hangs(event: WebhookEvent) -> None:
            await asyncio.Event().wait()

        @app.on_webhook("file.ready", timeout=0.3, max_attempts=1)
        def blocks(event: WebhookEvent) -> None:  # a plain function, in a thread
            release.wait(10)

        @app.on_webhook("file.ready", timeout=0.3, max_attempts=1)
        async def ignores_the_cancel(event: WebhookEvent) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return  # what it did counts; only the deadline's cancel is taken back

        try:
            async with run_daemon({"p": app}, settings=FAST) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                await daemon.wait_for(sent.id, settled=True)
                assert daemon.daemon.spool is not None
                rows = await daemon.daemon.spool.deliveries_of(sent.id)
        finally:
            release.set()
        got = {row["handler"]: (row["state"], row["last_outcome"]) for row in rows}
        assert got == {
            "p:hangs": ("dead", "timeout"),
            "p:blocks": ("dead", "timeout"),
            "p:ignores_the_cancel": ("done", "ok"),
        }
        for row in rows:
            # The sweep runs every tenth of the shortest timeout: 30 ms late at most, plus
            # the scheduling slack of a loaded test machine.
            assert 0.3 <= row["last_seconds"] < 0.45, row

    async def test_a_handler_that_always_fails_ends_dead_after_max_attempts(self):
        app = App()
        calls: list[str] = []

        @app.on_webhook("file.ready", max_attempts=2)
        async def doomed(event: WebhookEvent) -> None:
            calls.append(event.event_id or "")
            raise ValueError("no such bucket")

        with capture_logs() as logs:
            async with run_daemon({"p": app}, settings=FAST) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                outcomes = await daemon.wait_for(sent.id, settled=True)
                states = await _states(daemon, sent.id)
        assert len(calls) == 2  # max_attempts=2 on the handler beats [dispatch] max_attempts=3
        assert [(o.status, o.error) for o in outcomes] == [("dead", "ValueError: no such bucket")]
        assert states == {"p:doomed": ("dead", 2)}
        gave_up = [e for e in logs if e["event"] == "handler gave up"]
        assert [(e["attempt"], e["outcome"]) for e in gave_up] == [(2, "dead")]

    def test_backoff_is_full_jitter_under_an_exponential_cap(self):
        policy = RetryPolicy(backoff_initial=5, backoff_max=60)
        for attempts, cap in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)]:
            delays = [policy.delay(attempts) for _ in range(200)]
            assert all(0 <= d <= cap for d in delays)
            assert max(delays) > cap * 0.8  # the spread reaches the cap
            assert min(delays) < cap * 0.2  # and goes down to near zero


class TestWhatIsNotAnException:
    """SystemExit, KeyboardInterrupt or a CancelledError of a handler's own fail the call:
    they neither end the daemon nor pass for a stop that leaves the delivery running."""

    @pytest.mark.parametrize("raised", [SystemExit(2), KeyboardInterrupt()])
    @pytest.mark.parametrize("kind", ["async", "plain"])
    async def test_an_exit_raised_by_a_handler_fails_its_call_and_the_daemon_goes_on(
        self, kind: str, raised: BaseException
    ):
        app = App()
        calls: list[str] = []

        def exits_once(event: WebhookEvent) -> None:
            calls.append(event.event_id)
            if len(calls) == 1:
                raise raised

        async def exits_once_async(event: WebhookEvent) -> None:
            exits_once(event)

        app.on_webhook("file.ready")(exits_once_async if kind == "async" else exits_once)
        with capture_logs() as logs:
            async with run_daemon({"p": app}, settings=FAST) as daemon:
                first = await daemon.send("file.ready", wait=False)
                outcomes = await daemon.wait_for(first.id, settled=True)
                second = await daemon.send("file.ready", wait=False)
                await daemon.wait_for(second.id, settled=True)
                states = await _states(daemon, first.id)
        name = "exits_once_async" if kind == "async" else "exits_once"
        assert calls == [first.id, first.id, second.id]
        assert [o.status for o in outcomes] == ["ok"]
        assert states == {f"p:{name}": ("done", 2)}
        [failure] = [e for e in logs if e["event"] == "handler failed"]
        expected = f"the handler raised {type(raised).__name__}({raised!s})"
        assert failure["error"] == f"HandlerAborted: {expected}"

    async def test_a_cancelled_error_of_the_handler_s_own_is_a_failure_not_a_stop(self):
        app = App()
        calls = 0

        @app.on_webhook("file.ready", max_attempts=2)
        async def awaits_a_cancelled_future(event: WebhookEvent) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                future = asyncio.get_running_loop().create_future()
                future.cancel()  # by someone else: a library giving up on a request
                await future

        with capture_logs() as logs:
            async with run_daemon({"p": app}, settings=FAST) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                outcomes = await daemon.wait_for(sent.id, settled=True)
                states = await _states(daemon, sent.id)
        assert calls == 2
        assert [o.status for o in outcomes] == ["ok"]
        assert states == {"p:awaits_a_cancelled_future": ("done", 2)}
        [failure] = [e for e in logs if e["event"] == "handler failed"]
        assert failure["error"] == "HandlerAborted: the handler raised CancelledError()"


class TestDeadLetters:
    async def test_dead_delivery_is_listed_and_replay_runs_it_again(self, tmp_path: Path):
        app = App()
        broken = {"yes": True}
        ran: list[str] = []

        @app.on_webhook("comment.created", max_attempts=1)
        async def post_to_chat(event: WebhookEvent) -> None:
            ran.append(event.event_id or "")
            if broken["yes"]:
                raise RuntimeError("chat is down")

        async with run_daemon({"chat": app}, settings=FAST, directory=tmp_path) as daemon:
            sent = await daemon.send("comment.created", wait=False)
            await daemon.wait_for(sent.id, settled=True)
            config = str(daemon.config.path)

            # The CLI works on the spool file while the daemon holds it.
            listed = run_cli("queue", "list", "--state", "dead", "--json", "--config", config)
            assert listed.returncode == 0, listed.stderr
            (dead,) = json.loads(listed.stdout)
            assert (dead["event_id"], dead["handler"], dead["attempts"]) == (
                sent.id,
                "chat:post_to_chat",
                1,
            )
            assert dead["last_error"] == "RuntimeError: chat is down"

            broken["yes"] = False
            replayed = run_cli("queue", "replay", str(sent.id), "--config", config)
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == "replayed 1 delivery"
            outcomes = await daemon.wait_for(sent.id, settled=True)
        assert [o.status for o in outcomes] == ["ok"]
        assert ran == [sent.id, sent.id]


class TestConcurrency:
    async def test_a_concurrency_cap_holds_and_other_handlers_are_not_held_up(self):
        app = App()
        inside = {"now": 0, "most": 0}
        fast_done: list[str] = []
        all_fast_done = asyncio.Event()
        gate = asyncio.Event()

        @app.on_webhook("file.ready", concurrency=1)
        async def one_at_a_time(event: WebhookEvent) -> None:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
            await gate.wait()
            inside["now"] -= 1

        @app.on_webhook("file.ready")
        async def fast(event: WebhookEvent) -> None:
            fast_done.append(event.event_id or "")
            if len(fast_done) == 4:
                all_fast_done.set()

        async with run_daemon({"p": app}) as daemon:
            sent = [await daemon.send("file.ready", wait=False) for _ in range(4)]
            # Every fast call finishes while the capped handler is stuck on its first event.
            async with asyncio.timeout(10):
                await all_fast_done.wait()
            assert sorted(fast_done) == sorted(item.id for item in sent)
            assert inside == {"now": 1, "most": 1}
            gate.set()
            for item in sent:
                await daemon.wait_for(item.id, settled=True)
        assert inside["most"] == 1


class TestRestart:
    @pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
    async def test_a_call_cut_short_by_stop_runs_again_after_restart(
        self, tmp_path: Path, synchronous: str
    ):
        stuck = App()
        started = asyncio.Event()

        @stuck.on_webhook("file.ready", name="record")
        async def hang(event: WebhookEvent) -> None:
            started.set()
            await asyncio.Event().wait()

        working = App()
        seen: list[str] = []

        @working.on_webhook("file.ready", name="record")
        async def record(event: WebhookEvent) -> None:
            seen.append(event.event_id or "")

        settings = f'[spool]\nsynchronous = "{synchronous}"\n[dispatch]\ndrain_timeout = "100ms"\n'
        with capture_logs() as logs:
            async with run_daemon({"p": stuck}, settings=settings, directory=tmp_path) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                async with asyncio.timeout(10):
                    await started.wait()
        cut = [e for e in logs if e["event"].startswith("handler calls cut short")]
        assert cut[0]["count"] == 1
        async with run_daemon({"p": working}, settings=settings, directory=tmp_path) as daemon:
            outcomes = await daemon.wait_for(sent.id, settled=True)
        assert seen == [sent.id]
        assert [o.status for o in outcomes] == ["ok"]


class TestDispatchRate:
    async def test_a_dispatch_rate_spreads_handler_calls_and_rejects_nothing(self):
        app = App()
        called: list[float] = []

        @app.on_webhook("file.ready")
        async def record(event: WebhookEvent) -> None:
            called.append(time.monotonic())

        config = f"""
[server]
host = "127.0.0.1"
port = 0
[sources.default]
secrets = ["{TEST_SECRET}"]
dispatch_rate = 5.0
"""
        async with run_daemon({"p": app}, config_text=config) as daemon:
            sent = [await daemon.send("file.ready", wait=False) for _ in range(15)]
            for item in sent:
                await daemon.wait_for(item.id, settled=True)
        assert [item.status for item in sent] == [202] * 15
        assert len(called) == 15
        # A burst of 5, then 5 a second: the last 10 calls need about 2 s.
        assert called[-1] - called[0] >= 1.8
        # At no point more than burst + rate x elapsed.
        for index, moment in enumerate(called):
            assert index + 1 <= 5 + 5 * (moment - called[0]) + 1


async def _accept_one(spool: Spool, handler: WebhookHandler, event_id: str) -> None:
    # A body and signature of its own: the spool would take it for a duplicate otherwise.
    body = json.dumps({"type": "file.ready", "resource": {"id": event_id}}).encode()
    signature = f"v0={event_id}"
    incoming = Incoming(event_id, "default", "file.ready", body, 1, signature, "0", time.time())
    await spool.accept(incoming, [handler.key])


class _GatedSpool(Spool):
    """The real SQLite spool, whose claims or outcome writes (``gated``) wait at a gate,
    but for the first ``passes`` of them."""

    gated: str
    gate: asyncio.Event
    entered: asyncio.Event
    passes = 0

    async def _pass(self, method: str) -> None:
        if method != self.gated:
            return
        if self.passes:
            self.passes -= 1
            return
        self.entered.set()
        await self.gate.wait()

    async def claim(self, limit, caps, now=None):  # type: ignore[no-untyped-def]
        await self._pass("claim")
        return await super().claim(limit, caps, now)

    async def finish(self, delivery_id, **outcome):  # type: ignore[no-untyped-def]
        await self._pass("finish")
        await super().finish(delivery_id, **outcome)


@contextlib.asynccontextmanager
async def _held_at(
    gated: str, path: Path, handler: WebhookHandler
) -> AsyncIterator[tuple[_GatedSpool, Dispatcher, asyncio.Task[None]]]:
    """A dispatcher on a spool holding one event, ``e1``, for ``handler``; yields once the
    dispatcher waits at the gate of the spool's ``gated`` method (the gate still shut)."""
    spool = await _GatedSpool.open(path)
    spool.gated, spool.gate, spool.entered = gated, asyncio.Event(), asyncio.Event()
    try:
        await _accept_one(spool, handler, "e1")
        dispatcher = Dispatcher(spool, Routes([handler]))
        scheduler = asyncio.create_task(dispatcher.run())
        await spool.entered.wait()
        yield spool, dispatcher, scheduler
    finally:
        await spool.close()


class TestClaimsInFlight:
    async def test_a_fresh_delivery_cannot_take_a_place_the_claim_in_flight_may_fill(
        self, tmp_path: Path
    ):
        """A concurrency of 1 holds while a claim is in flight: a fresh event for the
        handler, accepted meanwhile, waits for the older one the claim takes."""
        b_started: dict[str, asyncio.Event] = {"b1": asyncio.Event(), "b2": asyncio.Event()}
        b_go = {"b1": asyncio.Event(), "b2": asyncio.Event()}
        a_go = asyncio.Event()
        a_calls: list[str] = []
        a_running = a_most = 0

        async def b(event: WebhookEvent) -> None:
            b_started[event.event_id or ""].set()
            await b_go[event.event_id or ""].wait()

        async def a(event: WebhookEvent) -> None:
            nonlocal a_running, a_most
            a_calls.append(event.event_id or "")
            a_running += 1
            a_most = max(a_most, a_running)
            await a_go.wait()
            a_running -= 1

        hb = WebhookHandler(func=b, event_types=("file.ready",), plugin="p", name="b")
        ha = WebhookHandler(
            func=a, event_types=("file.ready",), plugin="p", name="a", concurrency=1
        )
        spool = await _GatedSpool.open(tmp_path / "spool.db")
        spool.gated, spool.passes = "claim", 1  # the second claim waits at the gate
        spool.gate, spool.entered = asyncio.Event(), asyncio.Event()
        try:
            # Two older deliveries for b, then one for a: the first claim (two workers)
            # takes b's two, and leaves a's out at its limit.
            for event_id, handler in (("b1", hb), ("b2", hb), ("a1", ha)):
                await _accept_one(spool, handler, event_id)
            dispatcher = Dispatcher(spool, Routes([hb, ha]), workers=2)
            scheduler = asyncio.create_task(dispatcher.run())
            await b_started["b1"].wait()
            await b_started["b2"].wait()
            b_go["b1"].set()  # a worker frees: the second claim, for a's place, is held
            await spool.entered.wait()
            body = json.dumps({"type": "file.ready", "resource": {"id": "a2"}}).encode()
            fresh = Incoming("a2", "default", "file.ready", body, 1, "v0=a2", "0", time.time())
            accepted = await spool.accept(fresh, [ha.key])
            spool.gate.set()
            a_go.set()
            b_go["b2"].set()
            async with asyncio.timeout(10):
                await dispatcher.wait_for("a2", settled=True)
            assert await dispatcher.stop(drain_timeout=1.0) == 0
            await scheduler
        finally:
            await spool.close()
        assert list(accepted.started) == []
        assert a_calls == ["a1", "a2"]
        assert a_most == 1

    async def test_no_worker_the_claim_in_flight_may_fill_is_reserved_for_a_fresh_one(
        self, tmp_path: Path
    ):
        """While a claim that could fill every free worker is in flight, `reserve` holds
        none for a fresh delivery; once the claim's deliveries have started, it does."""
        b_go = asyncio.Event()
        b_started: list[str] = []

        async def b(event: WebhookEvent) -> None:
            b_started.append(event.event_id or "")
            await b_go.wait()

        async def a(event: WebhookEvent) -> None:
            return None

        hb = WebhookHandler(
            func=b, event_types=("file.ready",), plugin="p", name="b", concurrency=1
        )
        ha = WebhookHandler(func=a, event_types=("file.ready",), plugin="p", name="a")
        spool = await _GatedSpool.open(tmp_path / "spool.db")
        spool.gated, spool.passes = "claim", 1  # the second claim waits at the gate
        spool.gate, spool.entered = asyncio.Event(), asyncio.Event()
        try:
            for event_id in ("b1", "b2"):
                await _accept_one(spool, hb, event_id)
            # The first claim takes b1 alone (b's concurrency): a, with nothing due, is
            # known to have no backlog, so its fresh deliveries may start in their accept.
            dispatcher = Dispatcher(spool, Routes([hb, ha]), workers=2)
            scheduler = asyncio.create_task(dispatcher.run())
            async with asyncio.timeout(5):
                while b_started != ["b1"]:  # noqa: ASYNC110 - b's first call has begun
                    await asyncio.sleep(0.01)
            b_go.set()  # b1 ends: the second claim, for both workers, is held
            await spool.entered.wait()
            during = dispatcher.reserve([ha.key])
            spool.gate.set()
            async with asyncio.timeout(5):
                while b_started != ["b1", "b2"]:  # noqa: ASYNC110 - the claim's call began
                    await asyncio.sleep(0.01)
            after = dispatcher.reserve([ha.key])
            dispatcher.take(after, ())
            assert await dispatcher.stop(drain_timeout=1.0) == 0
            await scheduler
        finally:
            await spool.close()
        assert during == []
        assert after == [ha.key]


class _RefusesAFinish(Spool):
    """The real SQLite spool, whose first outcome write is refused as on a full disk."""

    refusals = 1

    async def finish(self, delivery_id, **outcome):  # type: ignore[no-untyped-def]
        if self.refusals:
            self.refusals -= 1
            raise SpoolUnavailable("spool_full", "the spool's disk is full")
        await super().finish(delivery_id, **outcome)


class _RefusesWhileCheckFails(_RefusesAFinish):
    """Refuses the first outcome write, then ``failing_checks`` probes, as a store that
    stays down a while."""

    failing_checks = 4
    checks: list[float]

    async def check(self) -> None:
        self.checks.append(time.monotonic())
        if len(self.checks) <= self.failing_checks:
            raise SpoolUnavailable("redis_unavailable", "the store cannot be reached")
        await super().check()


class TestKeptOutcomes:
    async def test_a_kept_outcome_is_written_within_a_second_of_the_store_taking_writes(
        self, tmp_path: Path
    ):
        """Probes keep a short pace while an outcome waits: on Redis another receiver
        runs a call again once its lease has run out and Redis takes writes."""

        async def quick(event: WebhookEvent) -> None:
            return None

        handler = WebhookHandler(func=quick, event_types=("file.ready",), plugin="p")
        spool = await _RefusesWhileCheckFails.open(tmp_path / "spool.db")
        spool.checks = []
        try:
            await _accept_one(spool, handler, "e1")
            dispatcher = Dispatcher(spool, Routes([handler]))
            scheduler = asyncio.create_task(dispatcher.run())
            async with asyncio.timeout(15):
                await dispatcher.wait_for("e1", settled=True)
            assert await dispatcher.stop(drain_timeout=1.0) == 0
            await scheduler
            rows = await spool.deliveries_of("e1")
        finally:
            await spool.close()
        assert [(r["state"], r["attempts"]) for r in rows] == [("done", 1)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(spool.checks)]
        # Without the short pace: 1, 2, 4 and 8 s.
        assert len(gaps) == 4
        assert max(gaps) < 1.5


class TestUnparseableStoredEvent:
    async def test_its_burial_refused_by_the_spool_is_kept_and_written_once_it_takes_writes(
        self, tmp_path: Path
    ):
        calls: list[str] = []

        async def record(event: WebhookEvent) -> None:
            calls.append(event.event_id or "")

        handler = WebhookHandler(func=record, event_types=("file.ready",), plugin="p")
        spool = await _RefusesAFinish.open(tmp_path / "spool.db")
        try:
            # Stored by rules of another day: no resource, which a webhook must have now.
            body = b'{"type": "file.ready"}'
            await spool.accept(
                Incoming("e1", "default", "file.ready", body, 1, "v0=e1", "0", time.time()),
                [handler.key],
            )
            dispatcher = Dispatcher(spool, Routes([handler]))
            scheduler = asyncio.create_task(dispatcher.run())
            async with asyncio.timeout(10):
                while (rows := await spool.deliveries_of("e1"))[0]["state"] != "dead":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert await dispatcher.stop(drain_timeout=1.0) == 0
            await scheduler
        finally:
            await spool.close()
        assert spool.refusals == 0, "the burial was refused once"
        assert [(r["state"], r["attempts"], r["last_outcome"]) for r in rows] == [
            ("dead", 1, "error")
        ]
        assert calls == []


class TestStopWhileClaiming:
    async def test_deliveries_claimed_as_stop_begins_are_given_back_unrun(self, tmp_path: Path):
        calls: list[str] = []

        async def record(event: WebhookEvent) -> None:
            calls.append(event.event_id or "")

        handler = WebhookHandler(func=record, event_types=("file.ready",), plugin="p")
        async with _held_at("claim", tmp_path / "spool.db", handler) as held:
            spool, dispatcher, scheduler = held  # the scheduler is inside a claim ...
            stopping = asyncio.create_task(dispatcher.stop(drain_timeout=1.0))
            await asyncio.sleep(0)  # ... when the stop begins
            spool.gate.set()
            assert await stopping == 0
            await scheduler
            rows = await spool.deliveries_of("e1")
        assert calls == []
        # Pending again for the next start; the claim counted, as for any call cut short.
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 1)]


class TestStopAfterTheCall:
    async def test_an_outcome_being_written_when_the_drain_ends_is_written(self, tmp_path: Path):
        async def quick(event: WebhookEvent) -> None:
            return None

        handler = WebhookHandler(func=quick, event_types=("file.ready",), plugin="p")
        async with _held_at("finish", tmp_path / "spool.db", handler) as held:
            spool, dispatcher, scheduler = held  # the call ended; its outcome is on its way
            stopping = asyncio.create_task(dispatcher.stop(drain_timeout=0.05))
            # Well past the drain: the stop still waits for the write, and cuts no call.
            done, _ = await asyncio.wait({stopping}, timeout=0.5)
            assert not done
            spool.gate.set()
            assert await stopping == 0
            await scheduler
            rows = await spool.deliveries_of("e1")
        assert [(r["state"], r["attempts"], r["last_outcome"]) for r in rows] == [("done", 1, "ok")]

    async def test_an_observer_that_hangs_holds_neither_the_delivery_nor_the_stop(
        self, tmp_path: Path
    ):
        heard: list[str] = []
        cancelled = asyncio.Event()

        async def hanging_observer(hook: str, **kwargs: object) -> None:
            heard.append(hook)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def quick(event: WebhookEvent) -> None:
            return None

        handler = WebhookHandler(func=quick, event_types=("file.ready",), plugin="p")
        spool = await Spool.open(tmp_path / "spool.db")
        try:
            await _accept_one(spool, handler, "e1")
            await _accept_one(spool, handler, "e2")
            dispatcher = Dispatcher(spool, Routes([handler]), workers=1, notify=hanging_observer)
            scheduler = asyncio.create_task(dispatcher.run())
            # One worker: the second call runs only if the first observer does not hold it.
            async with asyncio.timeout(10):  # a failure, not a hung suite
                first = await dispatcher.wait_for("e1", settled=True)
                second = await dispatcher.wait_for("e2", settled=True)
                assert await dispatcher.stop(drain_timeout=0.05) == 0
            await scheduler
        finally:
            await spool.close()
        assert [o.status for o in first + second] == ["ok", "ok"]
        assert heard == ["frameiod_delivery_finished"] * 2
        assert cancelled.is_set()
