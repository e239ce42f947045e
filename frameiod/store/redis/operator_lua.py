"""The Lua scripts of the operator's writes on the Redis spool (`frameiod.store.redis.actions`):
replay and purge, of every dead letter, of named ids, or of each id on its own.

Each runs atomically against the receivers' scripts (`frameiod.store.redis.scripts`), on
the key layout `frameiod.store.redis_keys` describes.
"""

from __future__ import annotations

from frameiod.store.redis_keys import LUA_PRELUDE

__all__ = ["ITEMS", "PURGE_DEAD", "REPLAY"]

# What the operator's scripts share, after the prelude: ARGV[2] is the time as the client
# wrote it, not fmt(): rounded, it could land just after a claim's now.
_SHARED = (
    LUA_PRELUDE
    + r"""
local now = ARGV[2]
-- A dead delivery made pending again, due now: 1, or 0 if it was not dead.
local function revive(id, h)
  local ek = event_key(id)
  if redis.call('HGET', ek, h .. '|state') ~= 'dead' then return 0 end
  local entry = redis.call('HGET', ek, h .. '|dead_entry')
  if entry then redis.call('XDEL', P .. ':dead', entry) end
  redis.call('HSET', ek, h .. '|state', 'pending', h .. '|attempts', '0', h .. '|due', now,
    h .. '|updated', now)
  redis.call('HDEL', ek, h .. '|dead_entry')
  redis.call('ZADD', due_key(h), now, id)
  count('dead', 'pending', 1)
  return 1
end
-- A dead delivery purged: 1, or 0 if it was not dead. Its event, left with nothing to
-- run, is settled, or deleted now if none of it was done.
local function bury(id, h)
  local ek = event_key(id)
  if redis.call('HGET', ek, h .. '|state') ~= 'dead' then return 0 end
  local entry = redis.call('HGET', ek, h .. '|dead_entry')
  if entry then redis.call('XDEL', P .. ':dead', entry) end
  redis.call('HSET', ek, h .. '|state', 'purged', h .. '|updated', now)
  redis.call('HDEL', ek, h .. '|dead_entry')
  count('dead', nil, 1)
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
  return 1
end
"""
)

# ARGV: P, now, then (event id, handler) pairs; an empty handler means every dead delivery
# of the event, an empty ARGV tail (no pairs) every dead letter in P:dead.
# Returns how many deliveries went from dead to pending.
REPLAY = (
    _SHARED
    + r"""
local replayed = 0
if #ARGV == 2 then
  for _, item in ipairs(redis.call('XRANGE', P .. ':dead', '-', '+')) do
    local f = {}
    for k = 1, #item[2], 2 do f[item[2][k]] = item[2][k + 1] end
    if f['event_id'] and f['handler'] then
      replayed = replayed + revive(f['event_id'], f['handler'])
    end
  end
  return replayed
end
for i = 3, #ARGV, 2 do
  local id, h = ARGV[i], ARGV[i + 1]
  if h == '' then
    for _, each in ipairs(handlers_of(event_key(id))) do replayed = replayed + revive(id, each) end
  else
    replayed = replayed + revive(id, h)
  end
end
return replayed
"""
)

# ARGV: P, now, "replay" or "purge", then (event id, handler) pairs as REPLAY takes them.
# Returns, per pair, how many deliveries it acted on and, when none, the state that
# stopped it ("running" first), or "" if it names no delivery.
ITEMS = (
    _SHARED
    + r"""
local act = ARGV[3] == 'replay' and revive or bury
local function why(id, h)
  local ek = event_key(id)
  local names = {h}
  if h == '' then names = handlers_of(ek) end
  local first = ''
  for _, each in ipairs(names) do
    local s = redis.call('HGET', ek, each .. '|state')
    if s == 'running' then return s end
    if first == '' and (s == 'pending' or s == 'done' or s == 'dead') then first = s end
  end
  return first
end
local out = {}
for i = 4, #ARGV, 2 do
  local id, h = ARGV[i], ARGV[i + 1]
  local n = 0
  if h == '' then
    for _, each in ipairs(handlers_of(event_key(id))) do n = n + act(id, each) end
  else
    n = act(id, h)
  end
  table.insert(out, n)
  if n > 0 then table.insert(out, 'dead') else table.insert(out, why(id, h)) end
end
return out
"""
)

# ARGV: P, now, cutoff. Purges the dead letters that died before cutoff (by the entry's
# 'at', else its id's milliseconds). Returns how many deliveries were purged.
PURGE_DEAD = (
    _SHARED
    + r"""
local cutoff = tonumber(ARGV[3])
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
    -- An entry that is not its delivery's current dead letter names nothing: drop it only.
    if redis.call('HGET', event_key(id), h .. '|dead_entry') == entry then
      purged = purged + bury(id, h)
    end
    redis.call('XDEL', P .. ':dead', entry)
  end
end
return purged
"""
)
