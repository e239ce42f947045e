"""Handler calls: plain functions run in a thread of their own."""

from __future__ import annotations

import asyncio
import threading

from frameiod.plugins.runner import call_handler


def test_a_plain_handler_outliving_its_event_loop_ends_quietly() -> None:
    """A daemon that stopped leaves a hung plain handler behind; when it finally returns,
    its thread must not die with "Event loop is closed"."""
    release = threading.Event()
    returned = threading.Event()
    failures: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)  # type: ignore[assignment]

    def handler(event: object) -> str:
        release.wait(10)
        returned.set()
        return "late"

    async def start() -> None:
        call_handler(handler, object())
        await asyncio.sleep(0)

    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(start())
        loop.close()
        threads = [t for t in threading.enumerate() if t.name == "frameiod-handler-event"]
        release.set()
        for thread in threads:
            thread.join(5)
    finally:
        threading.excepthook = previous
    assert returned.is_set()
    assert threads, "the handler ran in a thread of its own"
    assert failures == []
