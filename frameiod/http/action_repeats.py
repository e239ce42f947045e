"""Custom-action requests already answered, so that each signed request runs its handler once.

Frame.io may send an action request again, and anyone who captured one may replay it for
as long as its timestamp stays within the source's tolerance. Actions are not spooled, so
the webhooks' duplicate check does not see them: this record does, in memory. A repeat
gets the first request's answer (waiting for it while it is being made) and runs nothing.

It is this process's own: on Redis, a repeat that reaches another receiver runs there.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from frameiod.http.actions import ActionAnswer

__all__ = ["ActionRepeats", "RequestKey"]

RequestKey = tuple[str, int, str]
"""A signed request: its source, timestamp and signature."""

_REMEMBERED = 10_000
"""At most this many requests are remembered (the oldest go first): a flood of signed
requests cannot grow memory without bound."""


class ActionRepeats:
    """The answers of recent custom-action requests, by `RequestKey`, until their
    timestamps leave the tolerance."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = _REMEMBERED) -> None:
        self._clock = clock
        self._limit = limit
        self._answers: OrderedDict[
            RequestKey, tuple[float, asyncio.Future[ActionAnswer | None]]
        ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def first(self, key: RequestKey, stale_at: float) -> asyncio.Future[ActionAnswer | None] | None:
        """The answer to the request ``key`` came with before (a future while it is being
        made), or None if it is new: then it is remembered until ``stale_at`` (Unix
        seconds), and its caller must `settle` it."""
        self._forget_stale()
        known = self._answers.get(key)
        if known is not None:
            return known[1]
        self._answers[key] = (stale_at, asyncio.get_running_loop().create_future())
        while len(self._answers) > self._limit:
            self._answers.popitem(last=False)
        return None

    def settle(self, key: RequestKey, answer: ActionAnswer | None) -> None:
        """The first request ``key`` was answered ``answer`` (None: it got none, it was
        cut off): repeats get it too."""
        known = self._answers.get(key)
        if known is not None and not known[1].done():
            known[1].set_result(answer)

    def _forget_stale(self) -> None:
        now = self._clock()
        # Roughly in timestamp order (requests arrive as they are signed): stop at the
        # first still fresh, rather than scan them all.
        while self._answers:
            stale_at, _ = next(iter(self._answers.values()))
            if stale_at > now:
                return
            self._answers.popitem(last=False)
