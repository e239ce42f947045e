"""The per-source rate limit shared by every receiver: one token bucket per source in Redis.

The bucket is read, refilled and spent by one Lua script, atomically, on Redis's clock, so
the sum over all receivers respects ``rate`` and ``burst`` whatever their clocks say.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from frameiod.ratelimit import Limits
from frameiod.store.redis_keys import LUA_PRELUDE, redis_errors

__all__ = ["RedisSourceLimiter"]

# ARGV: P, source, rate, burst. Returns the seconds to wait, as a string (Redis would cut a
# Lua number down to an integer).
_TAKE = (
    LUA_PRELUDE
    + r"""
local key = P .. ':rate:' .. ARGV[2]
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local saved = redis.call('HMGET', key, 'tokens', 'updated')
local tokens = tonumber(saved[1]) or burst
local updated = tonumber(saved[2]) or now
if now > updated then tokens = math.min(burst, tokens + (now - updated) * rate) end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', key, 'tokens', fmt(tokens), 'updated', fmt(math.max(now, updated)))
-- A full bucket is the same as no bucket: let idle sources' keys go.
redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
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
