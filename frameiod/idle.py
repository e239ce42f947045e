"""An event loop that can run a callback at the moment it runs out of work.

The spool commits in batches, and the best moment to end a batch is when the event loop
has taken in every request that has arrived so far: then no request that is already here
misses the commit and waits for the next one. That moment is when the loop is about to
block in its selector. asyncio has no hook for it, so `new_event_loop` makes a loop whose
selector runs the callbacks given to `call_when_idle` just before it would block.

While the loop stays busy it never blocks, so each callback also has a deadline: it runs
at the loop's first look at its sockets after that deadline.
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["call_when_idle", "new_event_loop"]


class _IdleSelector(selectors.DefaultSelector):
    """The platform's default selector, running queued callbacks before it blocks."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[Callable[[], None]] = []
        self._deadline = float("inf")  # the earliest deadline among them

    def call_when_idle(self, callback: Callable[[], None], within: float) -> None:
        """Run ``callback`` once, before the loop next blocks or after ``within`` seconds."""
        self._waiting.append(callback)
        self._deadline = min(self._deadline, time.monotonic() + within)

    def close(self) -> None:
        """Run the waiting callbacks, which a closing loop will never reach, then close."""
        self._run_waiting()
        super().close()

    def _run_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._deadline = float("inf")
        for callback in waiting:
            callback()

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        """Run the waiting callbacks if the loop is about to block or one is due; then
        select."""
        # asyncio asks with a timeout of 0 while callbacks are ready to run or a timer is
        # due (busy), and while it is stopping (`close` runs what is still waiting then).
        if self._waiting and (timeout is None or timeout > 0 or time.monotonic() >= self._deadline):
            self._run_waiting()
            # A callback may have given the loop work, which the timeout it asked with
            # does not know of: look without waiting; the loop asks again if still idle.
            timeout = 0
        return super().select(timeout)


_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop on which `call_when_idle` works (the daemon runs on one)."""
    selector = _IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _selectors[loop] = selector
    return loop


def call_when_idle(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], None], within: float
) -> bool:
    """Have ``loop`` call ``callback`` once, when it next runs out of work or at its first
    look at its sockets ``within`` seconds from now, whichever comes first.

    Returns False, and arranges nothing, if ``loop`` was not made by `new_event_loop`.
    ``callback`` runs on the loop's thread, outside any task: it must be quick and must not
    raise.
    """
    selector = _selectors.get(loop)
    if selector is None:
        return False
    selector.call_when_idle(callback, within)
    return True
