"""The per-source rate limit shared by every receiver: one token bucket per source in Redis.

The bucket is read, refilled and spent by one Lua script, atomically, on Redis's clock, so
the sum over all receivers respects ``rate`` and ``burst`` whatever their clocks say.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from frameiod.ratelimit import Limits
from frameiod.store.redis_keys import LUA_PRELUDE, redis_errors

__all__ = ["BUCKET_LUA", "RedisSourceLimiter"]

BUCKET_LUA = r"""
-- A source's token bucket, refilled up to `now` (Redis's clock, read once per script, so
-- every receiver's takes are judged on one clock whatever their own clocks say).
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function bucket_read(source, rate, burst, now)
  local saved = redis.call('HMGET', P .. ':rate:' .. source, 'tokens', 'updated')
  local tokens = tonumber(saved[1]) or burst
  local updated = tonumber(saved[2]) or now
  if now > updated then tokens = math.min(burst, tokens + (now - updated) * rate) end
  return {tokens = tokens, updated = math.max(now, updated), rate = rate, burst = burst}
end
-- Spend one token: 0, or the seconds until the bucket holds one again.
local function bucket_take(b)
  if b.tokens >= 1 then
    b.tokens = b.tokens - 1
    return 0
  end
  return (1 - b.tokens) / b.rate
end
local function bucket_write(source, b)
  local key = P .. ':rate:' .. source
  redis.call('HSET', key, 'tokens', fmt(b.tokens), 'updated', fmt(b.updated))
  -- A full bucket is the same as no bucket: let idle sources' keys go.
  redis.call('PEXPIRE', key, math.ceil(b.burst / b.rate * 1000) + 1000)
end
"""
"""The bucket functions, shared by `_TAKE` and the Redis spool's accept script (which takes
a webhook's token in the same call that commits it)."""

# ARGV: P, source, rate, burst. Returns the seconds to wait, as a string (Redis would cut a
# Lua number down to an integer).
_TAKE = (
    LUA_PRELUDE
    + BUCKET_LUA
    + r"""
local b = bucket_read(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), redis_now())
local wait = bucket_take(b)
bucket_write(ARGV[2], b)
return fmt(wait)
"""
)


class RedisSourceLimiter:
    """`frameiod.ratelimit.SourceLimits` over Redis: one bucket per source, for all
    receivers."""

    def __init__(self, client: aioredis.Redis, url: str, prefix: str, limits: Limits) -> None:
        self._url = url
        self._prefix = prefix
        self._limits = dict(limits)
        self._take = client.register_script(_TAKE)

    async def take(self, source: str) -> float:
        """0 if this delivery may pass, else the seconds until the source may send again."""
        limit = self._limits.get(source)
        if limit is None:
            return 0.0
        rate, burst = limit
        with redis_errors(self._url):
            wait = await self._take(args=[self._prefix, source, repr(rate), burst])
        return float(wait)

    def taken_on_accept(self, source: str) -> tuple[float, int] | None:
        """The source's limit, if it has one: the accept script takes a webhook's token in
        the same call that commits it (one round trip, one fsync, not two). Custom
        actions, which are not stored, still call `take`."""
        return self._limits.get(source)
