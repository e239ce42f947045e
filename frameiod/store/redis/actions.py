"""The operator's queries on the Redis spool (``frameiod queue``), and the rows both it and
the daemon read out of an event hash.

Reads walk the event hashes (listed in ``P:events``) one page at a time: a snapshot per page,
not of the whole queue, which is fine for looking and what an admin tool can afford. The
writes (replay, purge) are each one Lua script, atomic against the receivers' own scripts.
The key layout and the state machine are those of `frameiod.store.redis`, whose scripts
write them; `frameiod.store.redis_keys` describes every key.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from frameiod.store.base import (
    STATES,
    Delivery,
    EventDelivery,
    EventDetail,
    ListedDelivery,
    QueueStats,
)
from frameiod.store.redis_keys import LUA_PRELUDE

__all__ = [
    "delivery_rows",
    "list_deliveries",
    "purge_dead",
    "replay",
    "show",
    "stats",
]

# Each read is one page of event hashes; large enough to be few round trips, small enough
# that no single reply is large.
_PAGE = 200

# ARGV: P, now, then (event id, handler) pairs; an empty handler means every dead delivery
# of the event, an empty ARGV tail (no pairs) every dead letter in P:dead.
# Returns how many deliveries went from dead to pending.
_REPLAY = (
    LUA_PRELUDE
    + r"""
-- The time as the client wrote it, not fmt(): rounded, it could land just after a claim's now.
local now = ARGV[2]
local replayed = 0
local function revive(id, h)
  local ek = event_key(id)
  if redis.call('HGET', ek, h .. '|state') ~= 'dead' then return end
  local entry = redis.call('HGET', ek, h .. '|dead_entry')
  if entry then redis.call('XDEL', P .. ':dead', entry) end
  redis.call('HSET', ek, h .. '|state', 'pending', h .. '|attempts', '0', h .. '|due', now,
    h .. '|updated', now)
  redis.call('HDEL', ek, h .. '|dead_entry')
  redis.call('ZADD', due_key(h), now, id)
  count('dead', 'pending', 1)
  replayed = replayed + 1
end
if #ARGV == 2 then
  for _, item in ipairs(redis.call('XRANGE', P .. ':dead', '-', '+')) do
    local f = {}
    for k = 1, #item[2], 2 do f[item[2][k]] = item[2][k + 1] end
    if f['event_id'] and f['handler'] then revive(f['event_id'], f['handler']) end
  end
  return replayed
end
for i = 3, #ARGV, 2 do
  local id, h = ARGV[i], ARGV[i + 1]
  if h == '' then
    for _, each in ipairs(handlers_of(event_key(id))) do revive(id, each) end
  else
    revive(id, h)
  end
end
return replayed
"""
)

# ARGV: P, now, cutoff. Purges the dead letters that died before cutoff (by the entry's
# 'at', else its id's milliseconds). Returns how many deliveries were purged.
_PURGE_DEAD = (
    LUA_PRELUDE
    + r"""
local now, cutoff = ARGV[2], tonumber(ARGV[3])
local purged = 0
-- 'at' is the receiver's clock, the one |updated uses; the entry id has Redis's, so no
-- range of ids can stand in for the cutoff: walk every dead letter (there are few).
for _, item in ipairs(redis.call('XRANGE', P .. ':dead', '-', '+')) do
  local entry = item[1]
  local f = {}
  for k = 1, #item[2], 2 do f[item[2][k]] = item[2][k + 1] end
  local at = tonumber(f['at'] or '') or tonumber(string.match(entry, '^(%d+)')) / 1000
  if at < cutoff then
    local id, h = f['event_id'] or '', f['handler'] or ''
    local ek = event_key(id)
    -- An entry that is not its delivery's current dead letter names nothing: drop it only.
    if redis.call('HGET', ek, h .. '|state') == 'dead'
        and redis.call('HGET', ek, h .. '|dead_entry') == entry then
      redis.call('HSET', ek, h .. '|state', 'purged', h .. '|updated', now)
      redis.call('HDEL', ek, h .. '|dead_entry')
      count('dead', nil, 1)
      purged = purged + 1
      local open, done = false, 0
      for _, other in ipairs(handlers_of(ek)) do
        local s = redis.call('HGET', ek, other .. '|state')
        if s == 'pending' or s == 'running' or s == 'dead' then
          open = true
          break
        elseif s == 'done' then
          done = done + 1
        end
      end
      if not open and done > 0 then
        -- Nothing left to run: the daemons' purge_done deletes it once keep_done has
        -- passed since it was received.
        redis.call('ZADD', P .. ':settled', redis.call('HGET', ek, 'received_at'), id)
      elseif not open then
        -- Nothing of it was ever done: gone now, as the SQLite spool drops events left
        -- without deliveries.
        local ev = redis.call('HMGET', ek, 'source', 'entry')
        if ev[1] and ev[2] then redis.call('XDEL', stream_key(ev[1]), ev[2]) end
        redis.call('DEL', ek)
        redis.call('ZREM', P .. ':events', id)
        redis.call('ZREM', P .. ':settled', id)
      end
    end
    redis.call('XDEL', P .. ':dead', entry)
  end
end
return purged
"""
)


def _str(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def delivery_rows(event_id: str, raw: dict[Any, Any]) -> list[EventDelivery]:
    """The deliveries in an event hash, in the order they were accepted; a dead letter
    `frameiod queue purge` removed is none of them any more."""
    fields = {str(_str(k)): _str(v) for k, v in raw.items() if k != b"body"}
    rows: list[EventDelivery] = []
    for handler in (fields.get("handlers") or "").split("\n"):
        # A purged dead letter stays in its event's hash (state "purged") until purge_done
        # deletes the event: what is left of the event must still be settled.
        if not handler or fields.get(f"{handler}|state") not in STATES:
            continue

        def get(name: str, handler: str = handler) -> str | None:
            return fields.get(f"{handler}|{name}") or None

        seconds = get("seconds")
        rows.append(
            {
                "id": f"{event_id} {handler}",
                "handler": handler,
                "state": get("state") or "",
                "attempts": int(get("attempts") or 0),
                "next_attempt_at": float(get("due") or 0) or None,
                "last_outcome": get("outcome"),
                "last_error": get("error"),
                "last_seconds": float(seconds) if seconds else None,
                "updated_at": float(get("updated") or 0) or None,
                "event_id": event_id,
            }
        )
    return rows


async def _events(client: aioredis.Redis, prefix: str) -> AsyncIterator[tuple[str, dict[Any, Any]]]:
    """(event id, raw hash) for every event in ``P:events``, newest first, a page per
    round trip."""
    key = f"{prefix}:events"
    # Paged by score, not by rank: events arriving or purged meanwhile shift ranks, which
    # would repeat or skip rows. ``skip`` steps over those of the boundary score already seen.
    bound, skip = "+inf", 0
    while True:
        rows = await client.zrevrangebyscore(
            key, bound, "-inf", start=skip, num=_PAGE, withscores=True
        )
        if not rows:
            return
        async with client.pipeline(transaction=False) as pipe:
            for event_id, _ in rows:
                pipe.hgetall(f"{prefix}:event:{_str(event_id)}")
            hashes = await pipe.execute()
        for (event_id, _), raw in zip(rows, hashes, strict=True):
            if raw:  # else purge_done deleted it since the page was read
                yield str(_str(event_id)), raw
        if len(rows) < _PAGE:
            return
        last = rows[-1][1]
        tied = sum(1 for _, score in rows if score == last)
        skip = skip + tied if bound == repr(last) else tied
        bound = repr(last)


async def stats(client: aioredis.Redis, prefix: str, now: float) -> QueueStats:
    """Deliveries per state (``P:counts``) and per handler, and the age of the oldest due
    pending one."""
    states = dict.fromkeys(STATES, 0)
    for state, value in (await client.hgetall(f"{prefix}:counts")).items():
        if (name := _str(state)) in states:
            # The counters move in the same scripts as the states, but a Redis that lost
            # its data halfway (no AOF) can leave them below zero.
            states[name] = max(0, int(value))
    handlers: dict[str, dict[str, int]] = {}
    oldest: float | None = None
    async for event_id, raw in _events(client, prefix):
        for row in delivery_rows(event_id, raw):
            handlers.setdefault(row["handler"], dict.fromkeys(STATES, 0))[row["state"]] += 1
            due = row["next_attempt_at"]
            # From the hash, not P:due:<handler>: a pending delivery's |due is its score
            # there, and an entry no receiver has taken in yet is in no due set at all.
            if row["state"] == "pending" and due is not None and due <= now:
                oldest = due if oldest is None else min(oldest, due)
    return {
        "events": int(await client.zcard(f"{prefix}:events")),
        "deliveries": states,
        "handlers": dict(sorted(handlers.items())),
        "oldest_pending_seconds": round(now - oldest, 3) if oldest is not None else None,
    }


async def list_deliveries(
    client: aioredis.Redis, prefix: str, state: str | None, handler: str | None, limit: int
) -> list[ListedDelivery]:
    """Deliveries, newest event first, optionally of one state and one handler; their ids
    are ``"<event id> <handler>"``."""
    rows: list[ListedDelivery] = []
    if limit <= 0:
        return rows
    async for event_id, raw in _events(client, prefix):
        event = {str(_str(k)): _str(v) for k, v in raw.items()}
        # Newest first within an event too, as numbered delivery ids would order them.
        for row in reversed(delivery_rows(event_id, raw)):
            if (state and row["state"] != state) or (handler and row["handler"] != handler):
                continue
            rows.append(
                {
                    "id": row["id"],
                    "event_id": event_id,
                    "type": event.get("type") or "",
                    "source": event.get("source") or "",
                    "handler": row["handler"],
                    "state": row["state"],
                    "attempts": row["attempts"],
                    "next_attempt_at": row["next_attempt_at"],
                    "last_outcome": row["last_outcome"],
                    "last_error": row["last_error"],
                    "received_at": float(event.get("received_at") or 0),
                }
            )
            if len(rows) >= limit:
                return rows
    return rows


async def show(client: aioredis.Redis, prefix: str, event_id: str) -> EventDetail | None:
    """One event, its payload (from its stream entry) and its deliveries; None if there is
    no such event."""
    raw = await client.hgetall(f"{prefix}:event:{event_id}")
    if not raw:
        return None
    event = {str(_str(k)): _str(v) for k, v in raw.items()}
    source, entry = event.get("source") or "", event.get("entry") or ""
    payload: Any = None
    entries = await client.xrange(f"{prefix}:stream:{source}", entry, entry) if entry else []
    for _, fields in entries:
        body = fields.get(b"body")
        payload = json.loads(body) if body else None
    deliveries: list[Delivery] = []
    for row in delivery_rows(event_id, raw):
        one = dict(row)
        del one["event_id"]  # the rows of one event do not repeat it
        deliveries.append(cast(Delivery, one))
    return {
        "id": event_id,
        "source": source,
        "type": event.get("type") or "",
        "timestamp": int(event.get("timestamp") or 0),
        "received_at": float(event.get("received_at") or 0),
        "payload": payload,
        "deliveries": deliveries,
    }


async def replay(client: aioredis.Redis, prefix: str, ids: Sequence[str], all_dead: bool) -> int:
    """Make dead deliveries pending again, due now, with their attempts reset.

    ``ids`` are event ids (every dead delivery of the event) or delivery ids
    (``"<event id> <handler>"``). Returns how many deliveries were replayed.
    """
    args: list[str] = [prefix, repr(time.time())]
    if not all_dead:
        if not ids:
            return 0
        for item in ids:
            event_id, _, handler = item.strip().partition(" ")
            args += [event_id, handler.strip()]
    return int(await client.register_script(_REPLAY)(args=args))


async def purge_dead(client: aioredis.Redis, prefix: str, older_than: float) -> int:
    """Purge dead letters that died more than ``older_than`` seconds ago: gone from
    ``P:dead`` and from every listing. An event left with nothing to run is settled (the
    daemons delete it after ``keep_done``), or deleted now if none of it was done.
    Returns how many deliveries went."""
    now = time.time()
    script = client.register_script(_PURGE_DEAD)
    return int(await script(args=[prefix, repr(now), repr(now - older_than)]))
