"""The operator's queries on the Redis spool (``frameiod queue``), and the rows both it and
the daemon read out of an event hash.

Reads walk the event hashes (listed in ``P:events``) one page at a time: a snapshot per page,
not of the whole queue, which is fine for looking and what an admin tool can afford. The
writes (replay, purge) are each one Lua script (`frameiod.store.redis.operator_lua`),
atomic against the receivers' own scripts.
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
    BadCursor,
    Delivery,
    DeliveryFilter,
    DeliveryPage,
    EventDelivery,
    EventDetail,
    ItemResult,
    ListedDelivery,
    QueueStats,
    decode_cursor,
    encode_cursor,
)
from frameiod.store.redis.operator_lua import ITEMS, PURGE_DEAD, REPLAY

__all__ = [
    "delivery_rows",
    "event_of",
    "list_deliveries",
    "list_page",
    "purge_dead",
    "purge_items",
    "purge_matching",
    "replay",
    "replay_items",
    "replay_matching",
    "show",
    "stats",
]

# Each read is one page of event hashes; large enough to be few round trips, small enough
# that no single reply is large.
_PAGE = 200

# Pairs per call of ITEMS: a script blocks Redis while it runs, so a large selection goes
# in several.
_ITEMS_BATCH = 200


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


async def _events(
    client: aioredis.Redis, prefix: str, after: tuple[float, str] | None = None
) -> AsyncIterator[tuple[str, dict[Any, Any], float]]:
    """(event id, raw hash, arrival score) for every event in ``P:events``, newest first
    (ties: greatest id first, as Redis orders them), a page per round trip; with ``after``
    (a score and an event id), only that event and those after it."""
    key = f"{prefix}:events"
    # Paged by score, not by rank: events arriving or purged meanwhile shift ranks, which
    # would repeat or skip rows. ``skip`` steps over those of the boundary score already seen.
    bound, skip = ("+inf", 0) if after is None else (repr(after[0]), 0)
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
        for (event_id, score), raw in zip(rows, hashes, strict=True):
            name = str(_str(event_id))
            if after is not None and score == after[0] and name > after[1]:
                continue  # on the page before
            if raw:  # else purge_done deleted it since the page was read
                yield name, raw, score
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
    sources: dict[str, dict[str, int]] = {}
    oldest: float | None = None
    async for event_id, raw, _ in _events(client, prefix):
        source = _str(raw.get(b"source")) or ""
        for row in delivery_rows(event_id, raw):
            handlers.setdefault(row["handler"], dict.fromkeys(STATES, 0))[row["state"]] += 1
            sources.setdefault(source, dict.fromkeys(STATES, 0))[row["state"]] += 1
            due = row["next_attempt_at"]
            # From the hash, not P:due:<handler>: a pending delivery's |due is its score
            # there, and an entry no receiver has taken in yet is in no due set at all.
            if row["state"] == "pending" and due is not None and due <= now:
                oldest = due if oldest is None else min(oldest, due)
    return {
        "events": int(await client.zcard(f"{prefix}:events")),
        "deliveries": states,
        "handlers": dict(sorted(handlers.items())),
        "sources": dict(sorted(sources.items())),
        "oldest_pending_seconds": round(now - oldest, 3) if oldest is not None else None,
    }


async def list_deliveries(
    client: aioredis.Redis, prefix: str, state: str | None, handler: str | None, limit: int
) -> list[ListedDelivery]:
    """Deliveries, newest event first, optionally of one state and one handler; their ids
    are ``"<event id> <handler>"``."""
    wanted = DeliveryFilter(state=state, handler=handler)
    return (await list_page(client, prefix, wanted, limit, None))["items"]


def _position(cursor: str) -> tuple[float, str, str]:
    """The arrival score, event id and handler of the last row of the page before."""
    try:
        score, event_id, handler = decode_cursor(cursor)
        return float(score), str(event_id), str(handler)
    except (TypeError, ValueError):
        raise BadCursor("not a cursor this store made") from None


async def list_page(
    client: aioredis.Redis,
    prefix: str,
    wanted: DeliveryFilter,
    limit: int,
    cursor: str | None,
) -> DeliveryPage:
    """Up to ``limit`` deliveries ``wanted``, newest event first (within an event, the last
    handler first, as numbered ids would order them), after ``cursor``: the score, event
    and handler of the last row of the page before."""
    position = _position(cursor) if cursor is not None else None
    if wanted.state == "dead":
        return await _dead_page(client, prefix, wanted, limit, position)
    items: list[tuple[ListedDelivery, float]] = []
    after = position[:2] if position is not None else None
    async for event_id, raw, score in _events(client, prefix, after):
        event = {str(_str(k)): _str(v) for k, v in raw.items()}
        kind, source = event.get("type") or "", event.get("source") or ""
        rows = list(reversed(delivery_rows(event_id, raw)))
        if position is not None and event_id == position[1] and score == position[0]:
            # The event the page before ended in: only its handlers after that row.
            order = list(reversed((event.get("handlers") or "").split("\n")))
            seen = order.index(position[2]) if position[2] in order else len(order)
            rows = [row for row in rows if order.index(row["handler"]) > seen]
        for row in rows:
            if not wanted.matches(row["state"], source, row["handler"], kind):
                continue
            if len(items) == limit:
                last, at = items[-1]
                handler = last["handler"]
                return {
                    "items": [item for item, _ in items],
                    "cursor": encode_cursor([at, last["event_id"], handler]),
                }
            received = float(event.get("received_at") or 0)
            items.append((_listed(row, event_id, kind, source, received), score))
    return {"items": [item for item, _ in items], "cursor": None}


async def _dead_page(
    client: aioredis.Redis,
    prefix: str,
    wanted: DeliveryFilter,
    limit: int,
    position: tuple[float, str, str] | None,
) -> DeliveryPage:
    """`list_page` of dead letters, from ``P:dead`` rather than every event: there are few
    of them, and a queue of many events would be walked whole to find them. Ordered and
    paged as `list_page` orders every delivery."""
    named: set[str] = set()
    start = "-"
    while True:
        entries = await client.xrange(f"{prefix}:dead", start, "+", count=_PAGE)
        named.update(str(_str(fields.get(b"event_id"))) for _, fields in entries)
        if len(entries) < _PAGE:
            break
        start = "(" + str(_str(entries[-1][0]))
    ids = sorted(named, reverse=True)
    async with client.pipeline(transaction=False) as pipe:
        for event_id in ids:
            pipe.hgetall(f"{prefix}:event:{event_id}")
        hashes = await pipe.execute()
    rows: list[tuple[tuple[float, str, int], ListedDelivery]] = []
    orders: dict[str, list[str]] = {}
    for event_id, raw in zip(ids, hashes, strict=True):
        if not raw:
            continue
        event = {str(_str(k)): _str(v) for k, v in raw.items()}
        kind, source = event.get("type") or "", event.get("source") or ""
        received = float(event.get("received_at") or 0)
        orders[event_id] = order = list(reversed((event.get("handlers") or "").split("\n")))
        for row in delivery_rows(event_id, raw):
            if not wanted.matches(row["state"], source, row["handler"], kind):
                continue
            key = (received, event_id, -order.index(row["handler"]))
            rows.append((key, _listed(row, event_id, kind, source, received)))
    rows.sort(key=lambda pair: pair[0], reverse=True)
    if position is not None:
        score, last_event, last_handler = position
        order = orders.get(last_event, [])
        seen = order.index(last_handler) if last_handler in order else -1
        rows = [
            (key, row)
            for key, row in rows
            if (key[0], key[1]) < (score, last_event)
            or ((key[0], key[1]) == (score, last_event) and -key[2] > seen)
        ]
    page = [row for _, row in rows[:limit]]
    if len(rows) <= limit or not page:
        return {"items": page, "cursor": None}
    at, last = rows[limit - 1][0][0], page[-1]
    return {"items": page, "cursor": encode_cursor([at, last["event_id"], last["handler"]])}


def _listed(
    row: EventDelivery, event_id: str, kind: str, source: str, received: float
) -> ListedDelivery:
    return {
        "id": row["id"],
        "event_id": event_id,
        "type": kind,
        "source": source,
        "handler": row["handler"],
        "state": row["state"],
        "attempts": row["attempts"],
        "next_attempt_at": row["next_attempt_at"],
        "last_outcome": row["last_outcome"],
        "last_error": row["last_error"],
        "received_at": received,
    }


async def event_of(client: aioredis.Redis, prefix: str, delivery_id: str) -> str | None:
    """The event id of delivery ``"<event id> <handler>"``, None if there is none."""
    event_id, _, handler = delivery_id.strip().partition(" ")
    if not handler:
        return None
    state = await client.hget(f"{prefix}:event:{event_id}", f"{handler.strip()}|state")
    return event_id if _str(state) in STATES else None


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
    return int(await client.register_script(REPLAY)(args=args))


async def purge_dead(client: aioredis.Redis, prefix: str, older_than: float) -> int:
    """Purge dead letters that died more than ``older_than`` seconds ago: gone from
    ``P:dead`` and from every listing. An event left with nothing to run is settled (the
    daemons delete it after ``keep_done``), or deleted now if none of it was done.
    Returns how many deliveries went."""
    now = time.time()
    script = client.register_script(PURGE_DEAD)
    return int(await script(args=[prefix, repr(now), repr(now - older_than)]))


def _pairs(ids: Sequence[str]) -> list[str]:
    """ARGV pairs of (event id, handler) for operator ids: an event id alone, or a
    delivery id ``"<event id> <handler>"``."""
    args: list[str] = []
    for item in ids:
        event_id, _, handler = item.strip().partition(" ")
        args += [event_id, handler.strip()]
    return args


async def _items(
    client: aioredis.Redis, prefix: str, action: str, ids: Sequence[str]
) -> list[ItemResult]:
    """Run `ITEMS` (``action``: "replay" or "purge") over ``ids``, a batch per call."""
    script = client.register_script(ITEMS)
    results: list[ItemResult] = []
    for start in range(0, len(ids), _ITEMS_BATCH):
        batch = list(ids[start : start + _ITEMS_BATCH])
        args = [prefix, repr(time.time()), action, *_pairs(batch)]
        out = await script(args=args)
        for index, item in enumerate(batch):
            count, state = int(out[2 * index]), _str(out[2 * index + 1]) or None
            results.append({"id": item, "count": count, "state": state})
    return results


async def replay_items(client: aioredis.Redis, prefix: str, ids: Sequence[str]) -> list[ItemResult]:
    """`replay` each of ``ids`` on its own: what each replayed, or why not."""
    return await _items(client, prefix, "replay", ids)


async def purge_items(client: aioredis.Redis, prefix: str, ids: Sequence[str]) -> list[ItemResult]:
    """Purge the dead deliveries of each of ``ids``: what each purged, or why not."""
    return await _items(client, prefix, "purge", ids)


async def _dead_letters(
    client: aioredis.Redis, prefix: str, wanted: DeliveryFilter, cutoff: float | None
) -> list[str]:
    """The delivery ids of the dead letters in ``P:dead`` that ``wanted`` matches (and that
    died before ``cutoff``), read a page at a time; the scripts check each is still dead."""
    found: list[str] = []
    start = "-"
    while True:
        entries = await client.xrange(f"{prefix}:dead", start, "+", count=_PAGE)
        letters = []
        for entry, fields in entries:
            named = {str(_str(k)): _str(v) or "" for k, v in fields.items()}
            stamp = str(_str(entry))
            at = float(named.get("at") or int(stamp.partition("-")[0]) / 1000)
            if cutoff is None or at < cutoff:
                letters.append((named.get("event_id") or "", named.get("handler") or ""))
        async with client.pipeline(transaction=False) as pipe:
            for event_id, _ in letters:
                pipe.hmget(f"{prefix}:event:{event_id}", "source", "type")
            kinds = await pipe.execute()
        for (event_id, handler), (source, kind) in zip(letters, kinds, strict=True):
            if wanted.matches("dead", _str(source) or "", handler, _str(kind) or ""):
                found.append(f"{event_id} {handler}")
        if len(entries) < _PAGE:
            return found
        start = "(" + str(_str(entries[-1][0]))


def _any_dead(wanted: DeliveryFilter) -> DeliveryFilter:
    """``wanted`` without its state: the actions on dead letters ignore it."""
    return DeliveryFilter(
        source=wanted.source, handler=wanted.handler, event_type=wanted.event_type
    )


async def replay_matching(client: aioredis.Redis, prefix: str, wanted: DeliveryFilter) -> int:
    """`replay` every dead delivery ``wanted`` matches."""
    if _any_dead(wanted) == DeliveryFilter():
        return await replay(client, prefix, (), all_dead=True)
    ids = await _dead_letters(client, prefix, _any_dead(wanted), None)
    return sum(item["count"] for item in await replay_items(client, prefix, ids))


async def purge_matching(
    client: aioredis.Redis, prefix: str, wanted: DeliveryFilter, older_than: float
) -> int:
    """`purge_dead` of the dead deliveries ``wanted`` matches."""
    if _any_dead(wanted) == DeliveryFilter():
        return await purge_dead(client, prefix, older_than)
    ids = await _dead_letters(client, prefix, _any_dead(wanted), time.time() - older_than)
    return sum(item["count"] for item in await purge_items(client, prefix, ids))
