"""A receiver's side of the source streams: it reads them as a consumer of the group `GROUP`
and moves what it reads into the per-handler sets of due deliveries, taking over what a
receiver that died had read but not moved, and forgetting consumers long gone."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from frameiod.logs import get_logger
from frameiod.store.redis.connection import text
from frameiod.store.redis_keys import GROUP

__all__ = ["Intake"]

log = get_logger("frameiod.redis")

_READ_COUNT = 256
# Taking over entries of dead receivers is cheap but not free: at most this often.
_AUTOCLAIM_SECONDS = 1.0
_SOURCES_SECONDS = 2.0
_CONSUMER_SECONDS = 300.0


class Intake:
    """Moves stream entries into the due sets, for one receiver (``node``)."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, node: str, schedule: AsyncScript
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._node = node
        self._schedule = schedule
        self.sources: set[str] = set()
        """Every source seen so far, by this receiver or (``P:sources``) another."""
        self._sources_read = 0.0
        self._autoclaimed = 0.0
        self._consumers_checked = float("-inf")

    async def take_in(self, now: float, adopt_after: float) -> None:
        """Move stream entries into the due sets: new ones, and ones a receiver that died
        read, idle for more than ``adopt_after`` seconds (longer than any lease)."""
        if now - self._sources_read > _SOURCES_SECONDS:
            await self.read_sources()
            self._sources_read = now
        if not self.sources:
            return
        streams = {f"{self._prefix}:stream:{source}": ">" for source in sorted(self.sources)}
        try:
            answer = await self._client.xreadgroup(
                GROUP, self._node, streams=streams, count=_READ_COUNT
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._create_groups(streams)
            return
        entries = [
            (stream, entry_id, fields)
            for stream, items in answer or []
            for entry_id, fields in items
        ]
        if now - self._autoclaimed > _AUTOCLAIM_SECONDS:
            self._autoclaimed = now
            entries += await self._adopt(streams, int(1000 * adopt_after))
        if entries:
            await self._schedule_entries(entries, now)

    async def _adopt(self, streams: dict[str, str], idle_ms: int) -> list[Any]:
        """Entries read by a receiver that then died, idle longer than ``idle_ms``."""
        adopted = []
        for stream in streams:
            _, items, *_ = await self._client.xautoclaim(
                stream, GROUP, self._node, min_idle_time=idle_ms, count=_READ_COUNT
            )
            adopted += [(stream, entry_id, fields) for entry_id, fields in items]
        if adopted:
            log.warning("took over stream entries of a receiver that stopped", count=len(adopted))
        return adopted

    async def _schedule_entries(self, entries: list[Any], now: float) -> None:
        args: list[Any] = [self._prefix, GROUP, repr(now)]
        prefix = f"{self._prefix}:stream:"
        for stream, entry_id, fields in entries:
            source = str(text(stream)).removeprefix(prefix)
            # Redis 6.2's XAUTOCLAIM gives None for an entry deleted meanwhile: acknowledge it.
            event_id = (fields or {}).get(b"id") or b""
            args += [source, entry_id, event_id]
        await self._schedule(args=args)

    async def _create_groups(self, streams: dict[str, str]) -> None:
        # Redis lost its data (no persistence) or a stream was deleted by hand.
        for stream in streams:
            try:
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_sources(self) -> set[str]:
        """Every source any receiver has accepted an event for (``P:sources``)."""
        members = await self._client.smembers(f"{self._prefix}:sources")
        self.sources |= {str(text(member)) for member in members}
        return self.sources

    async def forget_gone_consumers(self, idle_after: float) -> None:
        """Drop consumers with nothing pending that were idle for more than ``idle_after``
        seconds: every restart joins the group under a new name, and XINFO should not list
        them forever."""
        now = time.monotonic()
        if now - self._consumers_checked < _CONSUMER_SECONDS:
            return
        self._consumers_checked = now
        for source in sorted(self.sources):
            stream = f"{self._prefix}:stream:{source}"
            try:
                consumers = await self._client.xinfo_consumers(stream, GROUP)
            except ResponseError:  # no such stream or group (yet)
                continue
            for consumer in consumers:
                name = str(text(consumer.get("name")))
                idle_s = int(consumer.get("idle", 0)) / 1000
                gone = idle_s > idle_after
                if name != self._node and not consumer.get("pending") and gone:
                    await self._client.xgroup_delconsumer(stream, GROUP, name)
