"""What the Redis spool, rate limiter and ``frameiod queue`` share: the connection, the key
names, and how Redis errors become `SpoolUnavailable`.

Imported only when ``[spool] backend = "redis"`` (redis is an optional dependency).
Every key starts with ``[spool] stream_prefix`` (``P`` below):

- ``P:stream:<source>``: one stream per source; an accepted event is one entry (id, type,
  body, timestamp, received_at). All receivers read it as consumers of the group `GROUP`.
- ``P:event:<event id>``: a hash: the event's source, type, stream entry, signature data,
  its handlers (newline-separated), and per handler ``<handler>|state`` (pending, running,
  done, dead, purged), ``|attempts``, ``|due``, ``|outcome``, ``|error``, ``|seconds``,
  ``|updated`` and ``|dead_entry``.
- ``P:due:<handler>``: a sorted set of event ids by the time the handler's delivery is
  due; while a delivery runs, its score is the end of the lease of the receiver running it.
- ``P:dead``: a stream of dead letters (event, handler, error, attempts).
- ``P:events`` (event ids by arrival), ``P:settled`` (events all of whose deliveries are
  done, by arrival too: ``keep_done`` counts from there), ``P:sources`` (every source
  seen), ``P:counts`` (deliveries per state).
- ``P:seen:<source>:<timestamp>:<signature>``: a request seen (the event id it became), and
  ``P:seen_at``, those requests by timestamp: each is kept until its timestamp is older than
  the largest tolerance in force (`frameiod.store.base.replay_window`), then purged.
- ``P:body:<source>:<secret id>:<sha256>``: an identical body's twin, with a TTL.
- ``P:rate:<source>``: the shared token bucket of a source.

Several keys are named inside the Lua scripts, so frameiod needs a single Redis primary (or
a replicated one), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frameiod.store.base import SpoolUnavailable

__all__ = ["GROUP", "LUA_PRELUDE", "closed_error", "connect", "redis_errors", "safe_url"]

GROUP = "frameiod"
"""The consumer group every receiver reads the source streams in."""

# A command waits this long for Redis: long enough for an fsync under load, short enough
# that a request still gets its 503 well inside Frame.io's 5 seconds.
_SOCKET_TIMEOUT = 2.0

LUA_PRELUDE = r"""
local P = ARGV[1]
local function event_key(id) return P .. ':event:' .. id end
local function due_key(h) return P .. ':due:' .. h end
local function stream_key(s) return P .. ':stream:' .. s end
local function fmt(x) return string.format('%.6f', x) end
local function handlers_of(ek)
  local list = {}
  local joined = redis.call('HGET', ek, 'handlers')
  if joined then
    for h in string.gmatch(joined, '[^\n]+') do table.insert(list, h) end
  end
  return list
end
-- Move n deliveries from one state's counter to another's (either may be nil).
local function count(from, to, n)
  if n == 0 then return end  -- HINCRBY refuses "-0"
  if from then redis.call('HINCRBY', P .. ':counts', from, -n) end
  if to then redis.call('HINCRBY', P .. ':counts', to, n) end
end
"""


_SCHEMES = ("redis", "rediss", "unix")
_NOT_SHOWN = "[spool] redis_url (not shown: it is not a redis://, rediss:// or unix:// URL)"


def safe_url(url: str) -> str:
    """``url`` without its password, for log lines and error messages: none in the user
    part, and no query (``?password=`` is one way to give it). A URL that does not parse
    as Redis's is not shown at all: where its password is cannot be told."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number, a broken IPv6 address
        return _NOT_SHOWN
    if parts.scheme not in _SCHEMES or "://" not in url:
        return _NOT_SHOWN
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if port:
            host = f"{host}:{port}"
        netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(
    url: str, *, socket_timeout: float = _SOCKET_TIMEOUT, name: str = "frameiod"
) -> aioredis.Redis:
    """A client for ``url`` that waits ``socket_timeout`` seconds for an answer, known to
    Redis as ``name``. One retry on a fresh connection, at once, when the connection
    failed: after Redis restarts, each pooled connection fails once before the pool
    notices, and an unreachable Redis is said in seconds, not after backoffs.

    Never a retry after a timeout: the command was sent, and a Redis that was only slow
    (a long fsync, SIGSTOP) runs it when it wakes, so a retry would run it twice. A
    script is not made to be run twice: a batch's accept would take its source's tokens
    again, and a claim would mark deliveries running whose first answer was lost. The
    timeout is the caller's failure instead (503 to a webhook, whose resend is then a
    duplicate; a pause for the dispatcher). A connection lost after Redis ran the command
    (Redis killed mid-reply) is retried like any lost connection: that is rarer, and
    what it costs is the same as a timeout's retry."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=_SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name=name,
    )


def closed_error() -> SpoolUnavailable:
    """What every call on a closed spool raises, as on SQLite: the client would otherwise
    open a new connection and carry on."""
    return SpoolUnavailable("spool_closed", "the spool is closed")


@contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Turn Redis failures into `SpoolUnavailable` (503 for a request, a logged error for
    the dispatcher), naming the cause without the password."""
    where = safe_url(url)
    try:
        yield
        # redis-py (7.4, with a socket timeout) can swallow a cancellation that lands while
        # it waits for Redis, and return as if nothing happened: a task stopped then would
        # never stop. Its cancellation is still pending: raise it.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise SpoolUnavailable(
            "redis_unavailable", f"Redis at {where} cannot be reached: {exc}"
        ) from None
    except ResponseError as exc:
        # READONLY (a replica), MISCONF (snapshots failing), OOM (maxmemory): no writes.
        raise SpoolUnavailable("redis_refused", f"Redis at {where} refused: {exc}") from None
    except RedisError as exc:
        raise SpoolUnavailable("redis_error", f"Redis at {where} failed: {exc}") from None
