"""Calls of one Lua script in batches: the calls made while the event loop is busy go to
Redis as one call of the script, as the SQLite spool's writer commits them in one
transaction (see `frameiod.idle`). The spool sends its accepts and its handlers' outcomes
this way.

A call to Redis costs the receiver far more CPU in redis-py than the script costs Redis,
and with ``appendfsync always`` every call that writes waits for an fsync: one call per
batch shares both among its items. Items that arrive while `_IN_FLIGHT` batches await
their answers form the next, sent as soon as one returns.

redis-py encodes each argument of a call on its own, at a cost per argument; so a batch's
items go as one JSON array of their fields (one C call to encode, ``cjson.decode`` in the
script), and only bodies, bytes kept exactly as received, as arguments of their own. The
script answers with one JSON array too: a reply of many values costs as much to read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript

from frameiod.store.base import HOLD_AT_MOST, HandOver, SpoolUnavailable
from frameiod.store.redis_keys import redis_errors

__all__ = ["Batches"]

_BATCH_LIMIT = 128
"""Items per script call at most: Redis runs a script alone, and other receivers' calls
wait for it."""
_IN_FLIGHT = 2
"""Batches sent and not yet answered at most: with one, the receiver would sit idle while
Redis runs the script and fsyncs; with many, batches would shrink to an item each."""

Item = tuple[list[Any], bytes | None]
"""One item's fields, and its blob (None if it has none)."""

Reply = list[Any]
"""The script's answer for one item: ``width`` values of its reply."""


class Batches:
    """Gathers the items of one script's calls and sends them in batches, one call each.

    The script takes ``head`` (the same for every call), then the items' fields as one
    JSON array of arrays, then each item's blob, if it has one, in order; it answers with
    a JSON array of ``width`` values per item, in order.
    """

    def __init__(
        self,
        script: AsyncScript,
        url: str,
        head: Sequence[Any],
        width: int,
        handover: HandOver | None,
    ) -> None:
        self._script = script
        self._url = url
        self._head = list(head)
        self._width = width
        self._handover = handover
        self._waiting: list[tuple[Item, asyncio.Future[Reply]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._scheduled = False

    def submit(self, fields: list[Any], blob: bytes | None = None) -> asyncio.Future[Reply]:
        """Queue one item (``fields`` that JSON can carry, and a ``blob``, if any) for the
        next batch; the future gets its `Reply`, or `SpoolUnavailable` if Redis failed
        (then none of its batch was done)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append(((fields, blob), future))
        if len(self._sending) < _IN_FLIGHT and not self._scheduled:
            self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = True
        if self._handover is None or not self._handover(loop, self._send, HOLD_AT_MOST):
            loop.call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        # A request answered 503 at its deadline meanwhile cancelled its future: it is not
        # sent at all.
        waiting = [(args, future) for args, future in self._waiting if not future.done()]
        if len(self._sending) >= _IN_FLIGHT or not waiting:
            self._waiting = waiting
            return
        batch, self._waiting = waiting[:_BATCH_LIMIT], waiting[_BATCH_LIMIT:]
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Reply]]]) -> None:
        futures = [future for _, future in batch]
        try:
            items = [fields for (fields, _), _ in batch]
            blobs = [blob for (_, blob), _ in batch if blob is not None]
            packed = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
            arguments = [*self._head, packed, *blobs]
            with redis_errors(self._url):
                replies = json.loads(await self._script(args=arguments))
        except SpoolUnavailable as exc:
            _fail(futures, exc.reason, exc.detail)
        except BaseException as exc:
            # Cancelled by a close, or a failure of redis-py itself: the callers get a
            # SpoolUnavailable (a script runs whole or not at all).
            _fail(futures, "redis_error", str(exc) or "the spool is closed")
            if not isinstance(exc, Exception):
                raise
        else:
            width = self._width
            for index, future in enumerate(futures):
                if not future.done():
                    future.set_result(replies[width * index : width * (index + 1)])
        finally:
            # Out of the way before the next batch is sent, not when the task has ended.
            if (this := asyncio.current_task()) is not None:
                self._sending.discard(this)
            if self._waiting and not self._scheduled:
                self._schedule(asyncio.get_running_loop())

    async def drain(self) -> None:
        """Wait until every item queued so far has its answer."""
        while self._sending or self._waiting:
            if self._waiting and len(self._sending) < _IN_FLIGHT:
                self._send()  # not waiting for the hand-over: nothing else will come
            if self._sending:
                await asyncio.wait(self._sending)


def _fail(futures: list[asyncio.Future[Reply]], reason: str, detail: str) -> None:
    # One exception each: raised in several callers' tasks, one would gather all their
    # tracebacks.
    for future in futures:
        if not future.done():
            future.set_exception(SpoolUnavailable(reason, detail))
