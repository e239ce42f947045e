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

__all__ = ["MARGIN_SECONDS", "ActionRepeats", "RequestKey"]

RequestKey = tuple[str, int, str]
"""A signed request: its source, timestamp and signature."""

MARGIN_SECONDS = 60.0
"""Kept past the largest tolerance, for the clocks of Frame.io and this host to differ."""

_REMEMBERED = 10_000
"""At most this many requests are remembered (the oldest go first): a flood of signed
requests cannot grow memory without bound."""


class ActionRepeats:
    """The answers of recent custom-action requests, by `RequestKey`, for as long as their
    timestamps could still verify."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = _REMEMBERED) -> None:
        self._clock = clock
        self._limit = limit
        # By request, in the order first seen: its timestamp, and its answer (a future
        # while it is being made; None if the request was cut off before it had one).
        self._answers: OrderedDict[RequestKey, tuple[int, asyncio.Future[ActionAnswer | None]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._answers)

    def remember(
        self, key: RequestKey, window: float
    ) -> asyncio.Future[ActionAnswer | None] | None:
        """The answer an earlier request ``key`` got (a future while it is being made), or
        None if there was none: then this request is the first, and its caller must
        `settle` it. Requests are remembered while their timestamp is within ``window``
        seconds of now (the largest tolerance in force, and a minute's margin)."""
        self._forget_older_than(self._clock() - window)
        known = self._answers.get(key)
        if known is not None:
            return known[1]
        self._answers[key] = (key[1], asyncio.get_running_loop().create_future())
        while len(self._answers) > self._limit:
            self._answers.popitem(last=False)
        return None

    def settle(self, key: RequestKey, answer: ActionAnswer | None) -> None:
        """The first request ``key`` was answered ``answer`` (None: it was cut off before
        it had one): its repeats get it too."""
        known = self._answers.get(key)
        if known is not None and not known[1].done():
            known[1].set_result(answer)

    def _forget_older_than(self, oldest: float) -> None:
        # Roughly in timestamp order (requests arrive as they are signed): stop at the
        # first recent one, rather than scan them all.
        while self._answers:
            timestamp, _ = next(iter(self._answers.values()))
            if timestamp >= oldest:
                return
            self._answers.popitem(last=False)
