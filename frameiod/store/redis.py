"""The spool on Redis Streams: several receivers share one queue, and any of them may die.

Accepting an event is one Lua script: the duplicate checks, then ``XADD`` to the source's
stream and the event's hash with one pending delivery per handler. The 202 goes out only
after Redis answered (with ``appendfsync always``, after it reached the disk).

Every receiver reads the streams as a consumer of one group and moves what it reads into
the per-handler sorted sets of due deliveries (``P:due:<handler>``), then acknowledges the
entry. Deliveries are claimed from those sets by whichever receiver has a free worker: the
claim raises the attempt count, marks the delivery running and moves its score to the end
of a lease (the handler's timeout plus `LEASE_GRACE`). A receiver that dies mid-call
leaves the lease to expire, and the delivery becomes due again for the others. An entry
read but not yet moved by a receiver that died is taken over with ``XAUTOCLAIM`` once it
has been idle longer than the longest lease. A failed call goes back into the sorted set at
its retry time, a dead one also into the ``P:dead`` stream; each handler's state is its
own, so one that succeeded never runs again because a sibling failed.

Stream entries are deleted only with their event, when all its deliveries are done and
``[spool] keep_done`` has passed: an entry still pending is never trimmed.
See `frameiod.store.redis_keys` for every key.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from frameiod.http.ratelimit import Limits
from frameiod.http.redis_ratelimit import RedisSourceLimiter
from frameiod.logs import get_logger
from frameiod.store import redis_queue
from frameiod.store.base import (
    STATES,
    Accepted,
    Claimed,
    DeliveryId,
    EventDelivery,
    EventDetail,
    Incoming,
    ListedDelivery,
    Listeners,
    QueueError,
    QueueStats,
    Role,
    SpoolError,
)
from frameiod.store.redis_keys import GROUP, LUA_PRELUDE, connect, redis_errors, safe_url

__all__ = ["DEFAULT_COALESCE_SECONDS", "DEFAULT_HANDLER_TIMEOUT", "LEASE_GRACE", "RedisSpool"]

log = get_logger("frameiod.redis")

T = TypeVar("T")

LEASE_GRACE = 5.0
"""Seconds a claimed delivery may outlive its handler's timeout before others take it."""
DEFAULT_HANDLER_TIMEOUT = 30.0
"""The lease of a handler `RedisSpool.expect_handlers` did not name, unless told otherwise."""
DEFAULT_COALESCE_SECONDS = 660.0
"""How long an identical body may join a pending twin, unless told otherwise."""

_ERROR_LIMIT = 2000
_READ_COUNT = 256
# Taking over entries of dead receivers is cheap but not free: at most this often.
_AUTOCLAIM_SECONDS = 1.0
_SOURCES_SECONDS = 2.0
_CONSUMER_SECONDS = 300.0
_PURGE_BATCH = 500

# ARGV: P, event_id, source, type, body, timestamp, signature, secret_id, received_at,
# body key ttl, body digest, group, handlers... Returns {event id, 1 if duplicate else 0}.
# A seen request's key has no TTL: `_PURGE_SEEN` forgets it once its timestamp is older than
# the replay window in force then, which a reload may have widened since it was written.
_ACCEPT = (
    LUA_PRELUDE
    + r"""
local id, source = ARGV[2], ARGV[3]
local request = source .. ':' .. ARGV[6] .. ':' .. ARGV[7]
local seen_key = P .. ':seen:' .. request
local function remember(event)
  redis.call('SET', seen_key, event)
  redis.call('ZADD', P .. ':seen_at', ARGV[6], request)
end
local body_key = P .. ':body:' .. source .. ':' .. ARGV[8] .. ':' .. ARGV[11]
local seen = redis.call('GET', seen_key)
if seen then return {seen, 1} end
-- An identical body none of whose deliveries has started: that run will see the latest.
local twin = redis.call('GET', body_key)
if twin then
  local handlers = handlers_of(event_key(twin))
  local waiting = #handlers > 0
  for _, h in ipairs(handlers) do
    if redis.call('HGET', event_key(twin), h .. '|attempts') ~= '0' then
      waiting = false
      break
    end
  end
  if waiting then
    remember(twin)
    return {twin, 1}
  end
end
local stream = stream_key(source)
if redis.call('SADD', P .. ':sources', source) == 1 then
  redis.pcall('XGROUP', 'CREATE', stream, ARGV[12], '0', 'MKSTREAM')
end
local entry = redis.call('XADD', stream, '*', 'id', id, 'type', ARGV[4], 'body', ARGV[5],
  'timestamp', ARGV[6], 'received_at', ARGV[9])
local fields = {'source', source, 'type', ARGV[4], 'entry', entry, 'timestamp', ARGV[6],
  'signature', ARGV[7], 'secret_id', ARGV[8], 'received_at', ARGV[9]}
local handlers = {}
for i = 13, #ARGV do
  local h = ARGV[i]
  table.insert(handlers, h)
  for _, v in ipairs({h .. '|state', 'pending', h .. '|attempts', '0', h .. '|due', ARGV[9]}) do
    table.insert(fields, v)
  end
end
table.insert(fields, 'handlers')
table.insert(fields, table.concat(handlers, '\n'))
redis.call('HSET', event_key(id), unpack(fields))
redis.call('ZADD', P .. ':events', ARGV[9], id)
if #handlers > 0 then
  count(nil, 'pending', #handlers)
else
  redis.call('ZADD', P .. ':settled', ARGV[9], id)
end
remember(id)
redis.call('SET', body_key, id, 'EX', ARGV[10])
return {id, 0}
"""
)

# ARGV: P, group, now, then (source, entry id, event id) per stream entry read.
# Schedules each entry's waiting deliveries and acknowledges the entry. Returns how many
# deliveries were scheduled.
_SCHEDULE = (
    LUA_PRELUDE
    + r"""
local now = tonumber(ARGV[3])
local scheduled = 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i + 2]
  local ek = event_key(id)
  for _, h in ipairs(handlers_of(ek)) do
    local state = redis.call('HGET', ek, h .. '|state')
    if state == 'pending' then
      local due = redis.call('HGET', ek, h .. '|due') or fmt(now)
      scheduled = scheduled + redis.call('ZADD', due_key(h), 'NX', due, id)
    elseif state == 'running' then
      -- Claims keep running deliveries in the set (under a lease): NX leaves those alone.
      scheduled = scheduled + redis.call('ZADD', due_key(h), 'NX', fmt(now), id)
    end
  end
  redis.call('XACK', stream_key(ARGV[i]), ARGV[2], ARGV[i + 1])
end
return scheduled
"""
)

# ARGV: P, now ('' for Redis's clock), limit, then (handler, room, lease seconds) per
# handler that may start. Returns {event id, handler, attempts, source, body, timestamp,
# received_at} per claim.
_CLAIM = (
    LUA_PRELUDE
    + r"""
-- Leases are written and judged on one clock, Redis's: receivers' clocks may disagree.
local upto = ARGV[2]
if upto == '' then
  local t = redis.call('TIME')
  upto = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local now, limit = tonumber(upto), tonumber(ARGV[3])
local due = {}
for i = 4, #ARGV, 3 do
  local h, room, lease = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  -- The text, not fmt(now): rounded to microseconds it can fall just below a due time
  -- stored at full precision, and a delivery due exactly now would be skipped.
  local rows = redis.call('ZRANGEBYSCORE', due_key(h), '-inf', upto, 'WITHSCORES',
    'LIMIT', 0, math.min(room, limit))
  for j = 1, #rows, 2 do
    table.insert(due, {tonumber(rows[j + 1]), h, rows[j], lease})
  end
end
table.sort(due, function(a, b) return a[1] < b[1] end)
local claimed = {}
for _, item in ipairs(due) do
  if #claimed >= limit then break end
  local h, id, lease = item[2], item[3], item[4]
  local ek = event_key(id)
  local state = redis.call('HGET', ek, h .. '|state')
  -- 'running' here means its lease ran out: the receiver running it died. Run it again.
  if state == 'pending' or state == 'running' then
    redis.call('ZADD', due_key(h), fmt(now + lease), id)
    local attempts = redis.call('HINCRBY', ek, h .. '|attempts', 1)
    redis.call('HSET', ek, h .. '|state', 'running', h .. '|updated', fmt(now))
    if state == 'pending' then count('pending', 'running', 1) end
    local ev = redis.call('HMGET', ek, 'source', 'entry', 'timestamp', 'received_at')
    local body = ''
    local entries = redis.call('XRANGE', stream_key(ev[1]), ev[2], ev[2])
    if entries[1] then
      local f = entries[1][2]
      for k = 1, #f, 2 do
        if f[k] == 'body' then body = f[k + 1] end
      end
    end
    table.insert(claimed, {id, h, attempts, ev[1], body, ev[3], ev[4]})
  else
    redis.call('ZREM', due_key(h), id)  -- done, dead or purged meanwhile: nothing to run
  end
end
return claimed
"""
)

# ARGV: P, event id, handler, attempt, outcome, error, seconds, next attempt ('' if none),
# dead ('1' or '0'), now. Returns 1 if recorded, 0 if a newer attempt owns the delivery.
_FINISH = (
    LUA_PRELUDE
    + r"""
local id, h, outcome = ARGV[2], ARGV[3], ARGV[5]
local ek = event_key(id)
local state = redis.call('HGET', ek, h .. '|state')
if state ~= 'running' and state ~= 'pending' then return 0 end
-- A success always counts (the work is done); a failure only from the latest attempt.
if outcome ~= 'ok' and redis.call('HGET', ek, h .. '|attempts') ~= ARGV[4] then return 0 end
redis.call('HSET', ek, h .. '|outcome', outcome, h .. '|error', ARGV[6],
  h .. '|seconds', ARGV[7], h .. '|updated', ARGV[10])
if outcome == 'ok' then
  redis.call('HSET', ek, h .. '|state', 'done')
  redis.call('ZREM', due_key(h), id)
  count(state, 'done', 1)
  for _, other in ipairs(handlers_of(ek)) do
    local other_state = redis.call('HGET', ek, other .. '|state')
    -- 'purged': a dead letter `frameiod queue purge` removed; nothing left to run there.
    if other_state ~= 'done' and other_state ~= 'purged' then return 1 end
  end
  redis.call('ZADD', P .. ':settled', ARGV[10], id)
elseif ARGV[9] == '1' then
  local ev = redis.call('HMGET', ek, 'source', 'type')
  local entry = redis.call('XADD', P .. ':dead', '*', 'event_id', id, 'handler', h,
    'source', ev[1], 'type', ev[2], 'error', ARGV[6], 'attempts', ARGV[4], 'at', ARGV[10])
  redis.call('HSET', ek, h .. '|state', 'dead', h .. '|dead_entry', entry)
  redis.call('ZREM', due_key(h), id)
  count(state, 'dead', 1)
else
  redis.call('HSET', ek, h .. '|state', 'pending', h .. '|due', ARGV[8])
  redis.call('ZADD', due_key(h), ARGV[8], id)
  count(state, 'pending', 1)
end
return 1
"""
)

# ARGV: P, now, then (event id, handler, attempt) per delivery a stop cut short.
_RELEASE = (
    LUA_PRELUDE
    + r"""
local released = 0
for i = 3, #ARGV, 3 do
  local id, h = ARGV[i], ARGV[i + 1]
  local ek = event_key(id)
  if redis.call('HGET', ek, h .. '|state') == 'running'
      and redis.call('HGET', ek, h .. '|attempts') == ARGV[i + 2] then
    redis.call('HSET', ek, h .. '|state', 'pending', h .. '|due', ARGV[2])
    redis.call('ZADD', due_key(h), ARGV[2], id)
    count('running', 'pending', 1)
    released = released + 1
  end
end
return released
"""
)

# ARGV: P, cutoff, limit. Deletes events settled before cutoff, with their stream entries.
_PURGE_DONE = (
    LUA_PRELUDE
    + r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':settled', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local ek = event_key(id)
  local ev = redis.call('HMGET', ek, 'source', 'entry')
  if ev[1] then redis.call('XDEL', stream_key(ev[1]), ev[2]) end
  local done = 0
  for _, h in ipairs(handlers_of(ek)) do
    if redis.call('HGET', ek, h .. '|state') == 'done' then done = done + 1 end
  end
  count('done', nil, done)
  redis.call('DEL', ek)
  redis.call('ZREM', P .. ':settled', id)
  redis.call('ZREM', P .. ':events', id)
end
return #ids
"""
)

# ARGV: P, cutoff, limit. Forgets requests signed before cutoff; returns how many.
_PURGE_SEEN = (
    LUA_PRELUDE
    + r"""
local seen = redis.call('ZRANGEBYSCORE', P .. ':seen_at', '-inf', '(' .. ARGV[2],
  'LIMIT', 0, ARGV[3])
for _, request in ipairs(seen) do
  redis.call('DEL', P .. ':seen:' .. request)
end
if #seen > 0 then redis.call('ZREM', P .. ':seen_at', unpack(seen)) end
return #seen
"""
)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _parts(delivery_id: DeliveryId) -> list[str]:
    """Event id, handler and attempt of a claimed delivery's id."""
    event_id, rest = str(delivery_id).split(" ", 1)
    handler, attempt = rest.rsplit(" ", 1)
    return [event_id, handler, attempt]


def _node_name() -> str:
    # Unique per process: a restarted receiver must not inherit its predecessor's entries
    # (they are taken over like any dead receiver's).
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class RedisSpool:
    """`frameiod.store.base.SpoolBackend` on Redis Streams, shared by every receiver."""

    recovered = 0  # nothing to recover at start: leases and XAUTOCLAIM take over any time

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        prefix: str,
        *,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        coalesce_seconds: float = DEFAULT_COALESCE_SECONDS,
    ) -> None:
        self._client = client
        self._url = url
        self._prefix = prefix
        self._default_timeout = handler_timeout
        self._body_ttl = int(coalesce_seconds)
        self.node = _node_name()
        self._listeners = Listeners()
        self._timeouts: dict[str, float] = {}
        self._sources: set[str] = set()
        self._sources_read = 0.0
        self._autoclaimed = 0.0
        self._consumers_checked = float("-inf")
        self.forget_consumers_after = 3600.0
        """Seconds a consumer with nothing pending may be idle before it is dropped."""
        self._accept = client.register_script(_ACCEPT)
        self._schedule = client.register_script(_SCHEDULE)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._purge_done = client.register_script(_PURGE_DONE)
        self._purge_seen = client.register_script(_PURGE_SEEN)

    @classmethod
    async def open(
        cls,
        url: str,
        prefix: str,
        *,
        role: Role = "daemon",
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        coalesce_seconds: float = DEFAULT_COALESCE_SECONDS,
    ) -> RedisSpool:
        """Connect to the Redis at ``url`` and use its keys under ``prefix``; raise
        `SpoolError` if Redis cannot be used.

        ``handler_timeout`` is the lease of a handler `expect_handlers` did not name;
        ``coalesce_seconds`` how long an identical body may still join a pending twin.
        Warns when Redis's persistence settings could lose an acknowledged event. With
        ``role="operator"``, for the operator's actions: no warnings, a longer wait for
        Redis's answers, and `QueueError` if it cannot be reached.
        """
        settings = {"handler_timeout": handler_timeout, "coalesce_seconds": coalesce_seconds}
        if role == "operator":
            return await cls._open_for_operator(url, prefix)
        client = connect(url)
        try:
            info = await client.info("server")
        except RedisError as exc:
            await client.aclose()
            raise SpoolError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
        version = str(info.get("redis_version", "0"))
        if tuple(int(part) for part in version.split(".")[:2]) < (6, 2):
            await client.aclose()
            raise SpoolError(
                f"Redis at {safe_url(url)} is version {version}; frameiod needs 6.2 or newer "
                "(XAUTOCLAIM)"
            )
        spool = cls(client, url, prefix, **settings)
        await spool._warn_about_persistence()
        return spool

    @classmethod
    async def _open_for_operator(cls, url: str, prefix: str) -> RedisSpool:
        try:
            client = connect(
                url, socket_timeout=redis_queue.OPERATOR_SOCKET_TIMEOUT, name="frameiod-queue"
            )
        except ValueError as exc:  # not a redis://, rediss:// or unix:// URL
            raise QueueError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
        spool = cls(client, url, prefix)
        # Fail here, not halfway through an action, if Redis cannot be reached at all.
        await spool._operate(client.ping())
        return spool

    async def _operate(self, action: Awaitable[T]) -> T:
        """Await one of the operator's actions; every Redis failure a `QueueError`."""
        try:
            return await action
        except (RedisError, OSError) as exc:
            raise QueueError(f"cannot use Redis at {safe_url(self._url)}: {_why(exc)}") from None

    async def _warn_about_persistence(self) -> None:
        where = safe_url(self._url)
        try:
            # One pattern, not two names: Redis 6.2's CONFIG GET takes a single argument.
            settings = await self._client.config_get("append*")
        except RedisError as exc:  # CONFIG is often renamed away on managed Redis
            log.warning(
                "cannot read Redis's persistence settings; make sure appendonly is on",
                redis=where,
                error=str(exc),
            )
            return
        appendonly = _text(settings.get(b"appendonly", settings.get("appendonly")))
        fsync = _text(settings.get(b"appendfsync", settings.get("appendfsync")))
        try:
            policy = await self._client.config_get("maxmemory-policy")
        except RedisError:
            policy = {}
        eviction = _text(policy.get(b"maxmemory-policy", policy.get("maxmemory-policy")))
        if eviction not in (None, "noeviction"):
            log.warning(
                "Redis may evict keys when full: acknowledged events could vanish; set "
                "maxmemory-policy noeviction (a full Redis then refuses writes, and frameiod "
                "answers 503)",
                redis=where,
                maxmemory_policy=eviction,
            )
        if appendonly != "yes":
            log.warning(
                "Redis keeps no append-only file: a Redis restart loses events acknowledged "
                "since its last snapshot; set appendonly yes",
                redis=where,
            )
        elif fsync != "always":
            log.warning(
                "Redis fsyncs its append-only file only every second: a power loss or "
                "kernel crash can lose the last second of acknowledged events; set "
                "appendfsync always for the same promise as the SQLite spool",
                redis=where,
                appendfsync=fsync,
            )

    def describe(self) -> str:
        """The Redis URL (without password) and the key prefix."""
        return f"{safe_url(self._url)} ({self._prefix}:*)"

    def source_limiter(self, limits: Limits) -> RedisSourceLimiter:
        """A per-source limiter whose buckets every receiver on this Redis shares."""
        return RedisSourceLimiter(self._client, self._url, self._prefix, limits)

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever this receiver accepted or rescheduled work."""
        self._listeners.add(listener)

    async def check(self) -> None:
        """Raise `SpoolUnavailable` if Redis refuses a small write, or does not answer."""
        # A write, not a PING: a read-only replica (after a failover) and a full Redis
        # under noeviction both answer PING, and refuse every delivery.
        with redis_errors(self._url):
            await self._client.set(f"{self._prefix}:ready:{self.node}", 1, px=10_000)

    def expect_handlers(self, timeouts: dict[str, float]) -> None:
        """The handlers this receiver runs and their timeouts (the leases of its claims)."""
        self._timeouts = dict(timeouts)

    def _lease(self, handler: str) -> float:
        return self._timeouts.get(handler, self._default_timeout) + LEASE_GRACE

    async def accept(self, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        """``XADD`` the event with one pending delivery per handler, unless a duplicate."""
        digest = hashlib.sha256(incoming.body).hexdigest()
        with redis_errors(self._url):
            event_id, duplicate = await self._accept(
                args=[
                    self._prefix,
                    incoming.id,
                    incoming.source,
                    incoming.type,
                    incoming.body,
                    incoming.timestamp,
                    incoming.signature,
                    incoming.secret_id,
                    repr(incoming.received_at),
                    self._body_ttl,
                    digest,
                    GROUP,
                    *handlers,
                ]
            )
        event_id = _text(event_id)
        assert event_id is not None
        # Our own id back means the first try did land and a retry of the script after a
        # dropped connection saw it: that is this request's event, not a duplicate.
        if duplicate and event_id != incoming.id:
            return Accepted(event_id, duplicate=True, deliveries=0)
        self._sources.add(incoming.source)
        if handlers:
            self._listeners.notify()
        return Accepted(incoming.id, duplicate=False, deliveries=len(handlers))

    async def claim(
        self, limit: int, caps: dict[str, int], now: float | None = None
    ) -> list[Claimed]:
        """Take in new stream entries (and those of dead receivers), then claim up to
        ``limit`` due deliveries, oldest first, under a lease.

        Due times and leases are compared with Redis's clock unless ``now`` is given.
        """
        if limit <= 0 or not caps:
            return []
        moment = time.time() if now is None else now
        with redis_errors(self._url):
            await self._take_in(moment)
            args: list[Any] = [self._prefix, "" if now is None else repr(now), limit]
            for handler, room in caps.items():
                if room > 0:
                    args += [handler, room, repr(self._lease(handler))]
            rows = await self._claim(args=args)
        claimed = []
        for event_id, handler, attempts, source, body, timestamp, received_at in rows:
            item = Claimed(
                # The attempt too: a delivery whose lease ran out may be claimed again, by
                # this receiver as well, while the first call is still finishing.
                delivery_id=f"{_text(event_id)} {_text(handler)} {int(attempts)}",
                event_id=str(_text(event_id)),
                handler=str(_text(handler)),
                attempts=int(attempts),
                source=str(_text(source)),
                body=body,
                timestamp=int(timestamp),
                received_at=float(received_at),
            )
            claimed.append(item)
        return claimed

    async def confirm(self, item: Claimed) -> bool:
        """True: the claim script counted the attempt and set the lease before it returned."""
        return True

    async def _take_in(self, now: float) -> None:
        """Move stream entries into the due sets: new ones, and ones a dead receiver read."""
        if now - self._sources_read > _SOURCES_SECONDS:
            await self._read_sources()
            self._sources_read = now
        if not self._sources:
            return
        streams = {f"{self._prefix}:stream:{source}": ">" for source in sorted(self._sources)}
        try:
            answer = await self._client.xreadgroup(
                GROUP, self.node, streams=streams, count=_READ_COUNT
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
            entries += await self._adopt(streams, now)
        if entries:
            await self._schedule_entries(entries, now)

    async def _adopt(self, streams: dict[str, str], now: float) -> list[Any]:
        """Entries read by a receiver that then died, idle longer than any lease."""
        idle_ms = int(1000 * (max(self._timeouts.values(), default=self._default_timeout)))
        idle_ms += int(1000 * LEASE_GRACE)
        adopted = []
        for stream in streams:
            _, items, *_ = await self._client.xautoclaim(
                stream, GROUP, self.node, min_idle_time=idle_ms, count=_READ_COUNT
            )
            adopted += [(stream, entry_id, fields) for entry_id, fields in items]
        if adopted:
            log.warning("took over stream entries of a receiver that stopped", count=len(adopted))
        return adopted

    async def _schedule_entries(self, entries: list[Any], now: float) -> None:
        args: list[Any] = [self._prefix, GROUP, repr(now)]
        prefix = f"{self._prefix}:stream:"
        for stream, entry_id, fields in entries:
            source = str(_text(stream)).removeprefix(prefix)
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

    async def finish(
        self,
        delivery_id: DeliveryId,
        *,
        outcome: str,
        seconds: float,
        error: str | None,
        next_attempt_at: float | None = None,
        dead: bool = False,
    ) -> None:
        """Record how a call ended (ignored if a newer attempt already owns the delivery)."""
        event_id, handler, attempt = _parts(delivery_id)
        now = time.time()
        with redis_errors(self._url):
            await self._finish(
                args=[
                    self._prefix,
                    event_id,
                    handler,
                    attempt,
                    outcome,
                    (error or "")[:_ERROR_LIMIT],
                    repr(seconds),
                    repr(next_attempt_at) if next_attempt_at is not None else repr(now),
                    "1" if dead else "0",
                    repr(now),
                ]
            )
        if outcome != "ok" and not dead:
            self._listeners.notify()

    async def release(self, delivery_ids: Iterable[DeliveryId]) -> None:
        """Make deliveries cut short by a stop due now, for any receiver."""
        args: list[Any] = [self._prefix, repr(time.time())]
        for delivery_id in delivery_ids:
            args += _parts(delivery_id)
        if len(args) > 2:
            with redis_errors(self._url):
                await self._release(args=args)

    async def next_due(self, handlers: Iterable[str]) -> float | None:
        """The earliest score in the handlers' due sets (a retry, or a lease running out)."""
        names = list(handlers)
        if not names:
            return None
        with redis_errors(self._url):
            async with self._client.pipeline(transaction=False) as pipe:
                for handler in names:
                    pipe.zrange(f"{self._prefix}:due:{handler}", 0, 0, withscores=True)
                answers = await pipe.execute()
        scores = [rows[0][1] for rows in answers if rows]
        return min(scores) if scores else None

    async def deliveries_of(self, event_id: str) -> list[EventDelivery]:
        """Every delivery of one event, in the order they were accepted."""
        with redis_errors(self._url):
            raw = await self._client.hgetall(f"{self._prefix}:event:{event_id}")
        return redis_queue.delivery_rows(event_id, raw)

    async def gauges(self, now: float | None = None) -> tuple[dict[str, int], float]:
        """Deliveries per state (kept by the scripts), and the age of the oldest due one."""
        moment = time.time() if now is None else now
        with redis_errors(self._url):
            counts = await self._client.hgetall(f"{self._prefix}:counts")
            due = [await self.next_due(self._timeouts), *await self._oldest_unread()]
        due = min((when for when in due if when is not None), default=None)
        states = dict.fromkeys(STATES, 0)
        for state, value in counts.items():
            if (name := str(_text(state))) in states:
                states[name] = max(0, int(value))
        age = moment - due if due is not None and due <= moment else 0.0
        return states, age

    async def _read_sources(self) -> set[str]:
        """Every source any receiver has accepted an event for (``P:sources``)."""
        members = await self._client.smembers(f"{self._prefix}:sources")
        self._sources |= {str(_text(member)) for member in members}
        return self._sources

    async def _oldest_unread(self) -> list[float]:
        """When the oldest stream entry no receiver has read yet arrived, per source: those
        wait too (all workers busy, or every receiver stuck), and are in no due set yet."""
        oldest = []
        for source in sorted(await self._read_sources()):
            stream = f"{self._prefix}:stream:{source}"
            try:
                groups = await self._client.xinfo_groups(stream)
            except ResponseError:  # no such stream (yet)
                continue
            for group in groups:
                if _text(group.get("name")) != GROUP:
                    continue
                after = _text(group.get("last-delivered-id")) or "0-0"
                entries = await self._client.xrange(stream, f"({after}", "+", count=1)
                if entries:
                    entry_id = str(_text(entries[0][0]))
                    oldest.append(int(entry_id.split("-", 1)[0]) / 1000)
        return oldest

    async def purge_done(self, older_than: float, replay_window: float = 0.0) -> int:
        """Delete events (and their stream entries) all done more than ``older_than`` ago,
        and forget requests signed more than ``replay_window`` ago."""
        now = time.time()
        with redis_errors(self._url):
            purged = await self._in_batches(self._purge_done, now - older_than)
            await self._in_batches(self._purge_seen, now - replay_window)
            await self._forget_gone_consumers()
        return purged

    async def _in_batches(self, script: AsyncScript, cutoff: float) -> int:
        """Run a purge script until it has nothing left before ``cutoff``; how many it did."""
        done = 0
        while batch := int(await script(args=[self._prefix, repr(cutoff), _PURGE_BATCH])):
            done += batch
            if batch < _PURGE_BATCH:
                break
        return done

    async def _forget_gone_consumers(self) -> None:
        """Drop consumers with nothing pending that were idle for an hour: every restart
        joins the group under a new name, and XINFO should not list them forever."""
        now = time.monotonic()
        if now - self._consumers_checked < _CONSUMER_SECONDS:
            return
        self._consumers_checked = now
        for source in sorted(self._sources):
            stream = f"{self._prefix}:stream:{source}"
            try:
                consumers = await self._client.xinfo_consumers(stream, GROUP)
            except ResponseError:  # no such stream or group (yet)
                continue
            for consumer in consumers:
                name = str(_text(consumer.get("name")))
                idle_s = int(consumer.get("idle", 0)) / 1000
                gone = idle_s > self.forget_consumers_after
                if name != self.node and not consumer.get("pending") and gone:
                    await self._client.xgroup_delconsumer(stream, GROUP, name)

    async def stats(self, now: float | None = None) -> QueueStats:
        """Deliveries per state (``P:counts``) and per handler, and the age of the oldest
        due pending one."""
        moment = time.time() if now is None else now
        return await self._operate(redis_queue.stats(self._client, self._prefix, moment))

    async def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[ListedDelivery]:
        """Deliveries, newest event first; their ids are ``"<event id> <handler>"``."""
        return await self._operate(
            redis_queue.list_deliveries(self._client, self._prefix, state, handler, limit)
        )

    async def show(self, event_id: str) -> EventDetail | None:
        """One event, its payload (from its stream entry) and its deliveries."""
        return await self._operate(redis_queue.show(self._client, self._prefix, event_id))

    async def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """Make dead deliveries (of event ids, or ``"<event id> <handler>"``) pending again."""
        return await self._operate(redis_queue.replay(self._client, self._prefix, ids, all_dead))

    async def purge_dead(self, older_than: float) -> int:
        """Purge dead letters that died more than ``older_than`` seconds ago."""
        return await self._operate(redis_queue.purge_dead(self._client, self._prefix, older_than))

    async def close(self) -> None:
        """Close the connections (everything is already in Redis)."""
        await self._client.aclose()


def _why(exc: BaseException) -> str:
    """``exc`` as a line, naming the system's reason when Redis's text leaves it out (an
    asyncio connection says "Connect call failed", not "Connection refused")."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    errno = getattr(cause, "errno", None)
    if isinstance(cause, OSError) and errno and os.strerror(errno) not in text:
        return f"{os.strerror(errno)}: {text}"
    return text
