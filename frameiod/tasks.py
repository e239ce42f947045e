"""Fire-and-forget tasks that are kept until they finish.

asyncio keeps only a weak reference to a task: one started and not held may be collected
before it ends. A `TaskSet` holds each task it starts until the task is done, and is the
set a stop waits for or cancels.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet(set[asyncio.Task[Any]]):
    """The tasks started with `spawn` that have not finished yet."""

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task (in a copy of ``context``, if given, instead of the
        caller's), held here until it is done."""
        task = asyncio.create_task(coro, name=name, context=context and context.copy())
        self.add(task)
        task.add_done_callback(self.discard)
        return task

    def cancel(self) -> None:
        """Cancel every task still running."""
        for task in self:
            task.cancel()

    async def wait(self) -> None:
        """Wait for every task to end, whatever it ends with (bound it with a timeout)."""
        if self:
            await asyncio.gather(*self, return_exceptions=True)
