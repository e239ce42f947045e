"""The daemon's event loop runs callbacks when it runs out of work, or by their deadline."""

from __future__ import annotations

import asyncio
import time

from support import on_the_daemons_loop

from frameiod.idle import call_when_idle, new_event_loop


def test_a_plain_loop_arranges_nothing():
    loop = asyncio.new_event_loop()
    try:
        assert call_when_idle(loop, lambda: None, 0.0) is False
    finally:
        loop.close()


def test_the_callback_runs_once_the_ready_callbacks_are_done():
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        order: list[object] = []
        idle = asyncio.Event()

        def busy(step: int) -> None:
            order.append(step)
            if step < 100:
                loop.call_soon(busy, step + 1)

        def on_idle() -> None:
            order.append("idle")
            idle.set()

        assert call_when_idle(loop, on_idle, within=60)
        loop.call_soon(busy, 1)
        await idle.wait()
        return order

    assert on_the_daemons_loop(scenario) == [*range(1, 101), "idle"]


def test_on_a_loop_that_stays_busy_it_runs_by_its_deadline():
    async def scenario() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        ran_at: list[float] = []
        gave_up = False

        def spin() -> None:  # never lets the loop wait for I/O, for 5 s at most
            nonlocal gave_up
            if ran_at:
                return
            if time.monotonic() - started > 5:
                gave_up = True
                return
            loop.call_soon(spin)

        def on_deadline() -> None:
            ran_at.append(time.monotonic())
            ran.set()

        ran = asyncio.Event()
        started = time.monotonic()
        assert call_when_idle(loop, on_deadline, within=0.05)
        assert call_when_idle(loop, lambda: None, within=60)  # a later deadline waits
        loop.call_soon(spin)
        await ran.wait()
        return ran_at[0] - started, gave_up

    took, gave_up = on_the_daemons_loop(scenario)
    assert not gave_up  # it ran while the loop was still busy
    assert took >= 0.05


def test_each_callback_runs_once():
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        calls = 0

        def count() -> None:
            nonlocal calls
            calls += 1

        assert call_when_idle(loop, count, within=60)
        for _ in range(3):  # three times idle
            await asyncio.sleep(0.01)
        return calls

    assert on_the_daemons_loop(scenario) == 1


def test_a_closing_loop_runs_what_is_still_waiting():
    loop = new_event_loop()
    ran: list[int] = []
    assert call_when_idle(loop, lambda: ran.append(1), within=60)
    loop.close()  # never run: its selector never looked at its sockets
    assert ran == [1]
