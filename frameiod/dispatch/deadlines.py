"""Handler timeouts by one periodic sweep instead of a timer per call.

Arming and cancelling a timer for every call is a cost paid by every delivery, while a
deadline is rarely reached: one sweep, running only while calls run, cancels the calls
past their deadline. A call is cut off at most a tenth of its timeout (and never more than
a second) after its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

__all__ = ["Deadlines"]


class Deadlines:
    """The deadlines of calls in progress, each running in its own task."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._due: dict[Hashable, tuple[float, asyncio.Task[object]]] = {}
        self._expired: set[Hashable] = set()  # cancelled by the sweep
        self._sweeper: asyncio.TimerHandle | None = None

    def arm(self, key: Hashable, timeout: float) -> None:
        """Cancel the current task if it still runs ``timeout`` seconds from now."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a task to cancel")
        self._due[key] = (loop.time() + timeout, task)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._period, self._sweep)

    def disarm(self, key: Hashable) -> None:
        """The call ``key`` ended: forget its deadline (a handler that swallowed the
        sweep's cancel and returned keeps its outcome)."""
        del self._due[key]
        self.cut(key)

    def cut(self, key: Hashable) -> bool:
        """Take back the sweep's cancel of call ``key``, if it made one; True if that was
        the only cancel (as `asyncio.timeout` decides), so the call timed out."""
        if key not in self._expired:
            return False
        self._expired.discard(key)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for key, (deadline, task) in self._due.items():
            if deadline <= now and key not in self._expired:
                self._expired.add(key)
                task.cancel()
        self._sweeper = loop.call_later(self._period, self._sweep) if self._due else None
