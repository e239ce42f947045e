"""The Lua scripts of the daemon's operations on the Redis spool: each runs atomically
against every receiver's, and reads or writes the keys `frameiod.store.redis_keys` lists.

Every script's first argument is the key prefix ``P``; the comment above each says what
the rest are and what it returns.
"""

from __future__ import annotations

from frameiod.store.redis_keys import LUA_PRELUDE
from frameiod.store.redis_ratelimit import BUCKET_LUA

__all__ = [
    "ACCEPT",
    "CLAIM",
    "FINISH",
    "NEXT_DUE",
    "PURGE_DONE",
    "PURGE_SEEN",
    "RELEASE",
    "SCHEDULE",
]

# ARGV: P, group, body key ttl, the requests as one JSON array (`Batches`), each an array
# of strings: event id, source, type, timestamp, signature, secret id, received_at, body
# digest, rate and burst ('' if the source's token was taken already, or it has no limit),
# trace context ('' if none), and an array of the handlers; then each request's body.
# Returns, as a JSON array, two values per request: the event id and 'new' or 'duplicate';
# or '' and the seconds until the source may send again (as text), when its bucket was empty.
# A seen request's key has no TTL: `PURGE_SEEN` forgets it once its timestamp is older than
# the replay window in force then, which a reload may have widened since it was written.
ACCEPT = (
    LUA_PRELUDE
    + BUCKET_LUA
    + r"""
local group, ttl = ARGV[2], ARGV[3]
local requests = cjson.decode(ARGV[4])
local replies, buckets, bucket_order, now = {}, {}, {}, nil
local known, pending, arrivals, signed = {}, 0, {}, {}

local function remember(request, timestamp, event)
  redis.call('SET', P .. ':seen:' .. request, event)
  table.insert(signed, timestamp)
  table.insert(signed, request)
end

-- The request's event id, and whether it is a duplicate.
local function accept(r, body)
  local id, source, kind, timestamp, signature, secret, received =
    r[1], r[2], r[3], r[4], r[5], r[6], r[7]
  local handlers = r[12]
  local request = source .. ':' .. timestamp .. ':' .. signature
  local seen = redis.call('GET', P .. ':seen:' .. request)
  if seen then return seen, 'duplicate' end
  local body_key = P .. ':body:' .. source .. ':' .. secret .. ':' .. r[8]
  -- An identical body none of whose deliveries has started: that run will see the latest.
  local twin = redis.call('GET', body_key)
  if twin then
    local twins = handlers_of(event_key(twin))
    local waiting = #twins > 0
    for _, h in ipairs(twins) do
      if redis.call('HGET', event_key(twin), h .. '|attempts') ~= '0' then
        waiting = false
        break
      end
    end
    if waiting then
      remember(request, timestamp, twin)
      return twin, 'duplicate'
    end
  end
  local stream = stream_key(source)
  if not known[source] then
    known[source] = true
    if redis.call('SADD', P .. ':sources', source) == 1 then
      redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    end
  end
  local entry = redis.call('XADD', stream, '*', 'id', id, 'type', kind,
    'body', body, 'timestamp', timestamp, 'received_at', received)
  local fields = {'source', source, 'type', kind, 'entry', entry,
    'timestamp', timestamp, 'signature', signature, 'secret_id', secret,
    'received_at', received}
  if r[11] ~= '' then
    table.insert(fields, 'trace_context')
    table.insert(fields, r[11])
  end
  for _, h in ipairs(handlers) do
    for _, v in ipairs({h .. '|state', 'pending', h .. '|attempts', '0', h .. '|due', received}) do
      table.insert(fields, v)
    end
  end
  table.insert(fields, 'handlers')
  table.insert(fields, table.concat(handlers, '\n'))
  redis.call('HSET', event_key(id), unpack(fields))
  table.insert(arrivals, received)
  table.insert(arrivals, id)
  if #handlers > 0 then
    pending = pending + #handlers
  else
    redis.call('ZADD', P .. ':settled', received, id)
  end
  remember(request, timestamp, id)
  redis.call('SET', body_key, id, 'EX', ttl)
  return id, 'new'
end

for i, r in ipairs(requests) do
  local source, rate = r[2], r[9]
  local wait = 0
  if rate ~= '' then
    local b = buckets[source]
    if not b then
      now = now or redis_now()
      b = bucket_read(source, tonumber(rate), tonumber(r[10]), now)
      buckets[source] = b
      table.insert(bucket_order, source)
    end
    wait = bucket_take(b)
  end
  if wait > 0 then
    table.insert(replies, '')
    table.insert(replies, fmt(wait))
  else
    local event, outcome = accept(r, ARGV[4 + i])
    table.insert(replies, event)
    table.insert(replies, outcome)
  end
end
for _, source in ipairs(bucket_order) do bucket_write(source, buckets[source]) end
if #arrivals > 0 then redis.call('ZADD', P .. ':events', unpack(arrivals)) end
if #signed > 0 then redis.call('ZADD', P .. ':seen_at', unpack(signed)) end
count(nil, 'pending', pending)
return cjson.encode(replies)
"""
)

# ARGV: P, group, now, then (source, entry id, event id) per stream entry read.
# Schedules each entry's waiting deliveries and acknowledges the entry. Returns how many
# deliveries were scheduled.
SCHEDULE = (
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
# handler that may start. Returns nothing if nothing was claimed; else a JSON array of
# [event id, handler, attempts, source, timestamp, received_at, trace context (false if
# none)] per claim, then each claim's body.
CLAIM = (
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
-- The claims' fields as one JSON array (reply[1]), then their bodies, bytes as stored: a
-- reply of many values costs the receiver a parse each.
local fields, reply = {}, {''}
for _, item in ipairs(due) do
  if #fields >= limit then break end
  local h, id, lease = item[2], item[3], item[4]
  local ek = event_key(id)
  local state = redis.call('HGET', ek, h .. '|state')
  -- 'running' here means its lease ran out: the receiver running it died. Run it again.
  if state == 'pending' or state == 'running' then
    redis.call('ZADD', due_key(h), fmt(now + lease), id)
    local attempts = redis.call('HINCRBY', ek, h .. '|attempts', 1)
    redis.call('HSET', ek, h .. '|state', 'running', h .. '|updated', fmt(now))
    if state == 'pending' then count('pending', 'running', 1) end
    local ev = redis.call('HMGET', ek, 'source', 'entry', 'timestamp', 'received_at',
      'trace_context')
    local body = ''
    local entries = redis.call('XRANGE', stream_key(ev[1]), ev[2], ev[2])
    if entries[1] then
      local f = entries[1][2]
      for k = 1, #f, 2 do
        if f[k] == 'body' then body = f[k + 1] end
      end
    end
    table.insert(fields, {id, h, attempts, ev[1], ev[3], ev[4], ev[5]})
    table.insert(reply, body)
  else
    redis.call('ZREM', due_key(h), id)  -- done, dead or purged meanwhile: nothing to run
  end
end
if #fields == 0 then return {} end
reply[1] = cjson.encode(fields)
return reply
"""
)

# ARGV: P, group, how many unread entries to look at per stream, '1' if an unread entry's
# deliveries count whatever their handler (else '0'), then handlers. Returns the earliest
# due time (or lease end) of their deliveries as text, or false if none.
NEXT_DUE = (
    LUA_PRELUDE
    + r"""
local group, scan, any = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local wanted, earliest, text = {}, nil, false
-- Kept as the text it was stored as: Python reads it back to the same float.
local function consider(stored)
  local when = tonumber(stored)
  if when and (earliest == nil or when < earliest) then earliest, text = when, stored end
end
for i = 5, #ARGV do
  local h = ARGV[i]
  wanted[h] = true
  local rows = redis.call('ZRANGE', due_key(h), 0, 0, 'WITHSCORES')
  if rows[2] then consider(rows[2]) end
end
-- An entry no receiver has read yet is in no due set: its event's hash says when its
-- deliveries are due. Entries are read in order, so the unread are those after the
-- group's last delivered id, and the oldest of them come first.
for _, source in ipairs(redis.call('SMEMBERS', P .. ':sources')) do
  local stream = stream_key(source)
  local after = nil
  if redis.call('EXISTS', stream) == 1 then
    after = '0-0'  -- no group yet: the first take-in reads the stream from its start
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f['name'] == group then after = f['last-delivered-id'] end
    end
  end
  if after then
    for _, item in ipairs(redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', scan)) do
      local id = nil
      for k = 1, #item[2], 2 do
        if item[2][k] == 'id' then id = item[2][k + 1] end
      end
      if id then
        local ek = event_key(id)
        for _, h in ipairs(handlers_of(ek)) do
          if (any or wanted[h]) and redis.call('HGET', ek, h .. '|state') == 'pending' then
            consider(redis.call('HGET', ek, h .. '|due'))
          end
        end
      end
    end
  end
end
return text
"""
)

# ARGV: P, the outcomes as one JSON array (`Batches`), each an array of strings: event id,
# handler, attempt, outcome, error, seconds, next attempt ('' if none), dead ('1' or '0'),
# now. Returns, as a JSON array, per outcome 1 if recorded, 0 if a newer attempt owns the
# delivery.
FINISH = (
    LUA_PRELUDE
    + r"""
local function finish(o)
  local id, h, outcome = o[1], o[2], o[4]
  local ek = event_key(id)
  local state = redis.call('HGET', ek, h .. '|state')
  if state ~= 'running' and state ~= 'pending' then return 0 end
  -- A success always counts (the work is done); a failure only from the latest attempt.
  if outcome ~= 'ok' and redis.call('HGET', ek, h .. '|attempts') ~= o[3] then
    return 0
  end
  local error, now = o[5], o[9]
  redis.call('HSET', ek, h .. '|outcome', outcome, h .. '|error', error,
    h .. '|seconds', o[6], h .. '|updated', now)
  if outcome == 'ok' then
    redis.call('HSET', ek, h .. '|state', 'done')
    redis.call('ZREM', due_key(h), id)
    count(state, 'done', 1)
    for _, other in ipairs(handlers_of(ek)) do
      local other_state = redis.call('HGET', ek, other .. '|state')
      -- 'purged': a dead letter `frameiod queue purge` removed; nothing left to run there.
      if other_state ~= 'done' and other_state ~= 'purged' then return 1 end
    end
    -- Scored by arrival, as every event in P:settled: keep_done counts from there.
    redis.call('ZADD', P .. ':settled', redis.call('HGET', ek, 'received_at'), id)
  elseif o[8] == '1' then
    local ev = redis.call('HMGET', ek, 'source', 'type')
    local entry = redis.call('XADD', P .. ':dead', '*', 'event_id', id, 'handler', h,
      'source', ev[1], 'type', ev[2], 'error', error, 'attempts', o[3], 'at', now)
    redis.call('HSET', ek, h .. '|state', 'dead', h .. '|dead_entry', entry)
    redis.call('ZREM', due_key(h), id)
    count(state, 'dead', 1)
  else
    local due = o[7]
    redis.call('HSET', ek, h .. '|state', 'pending', h .. '|due', due)
    redis.call('ZADD', due_key(h), due, id)
    count(state, 'pending', 1)
  end
  return 1
end
local recorded = {}
for _, o in ipairs(cjson.decode(ARGV[2])) do table.insert(recorded, finish(o)) end
return cjson.encode(recorded)
"""
)

# ARGV: P, now, then (event id, handler, attempt) per delivery a stop cut short.
RELEASE = (
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

# ARGV: P, cutoff, limit. Deletes settled events received before cutoff, with their stream
# entries. Returns how many.
PURGE_DONE = (
    LUA_PRELUDE
    + r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':settled', '-inf', '(' .. ARGV[2],
  'LIMIT', 0, ARGV[3])
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
PURGE_SEEN = (
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
