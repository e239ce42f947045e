"""The operator's operations on any store: what ``frameiod queue`` and the admin API
(`frameiod.http.admin`) both carry out, one implementation each.

Each takes an open `SpoolBackend` and what the operator asked for, checks it (raising
`InvalidRequest`, which both callers show as it is), and answers with JSON-ready data.
Delivery ids are the store's own here; the admin API gives and takes them in the URL-safe
form of `public_id`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from frameiod.store.base import (
    STATES,
    BadCursor,
    DeliveryFilter,
    DeliveryId,
    DeliveryPage,
    EventDetail,
    ItemResult,
    QueueError,
    QueueStats,
    SpoolBackend,
)

__all__ = [
    "FILTER_KEYS",
    "MAX_IDS",
    "MAX_LIMIT",
    "InvalidRequest",
    "Refused",
    "delivery",
    "list_page",
    "parse_filter",
    "public_id",
    "purge",
    "replay",
    "stats",
    "store_id",
]

MAX_LIMIT = 500
"""The most deliveries one page holds: a page is one read, never the whole queue."""
MAX_IDS = 1000
"""The most ids one replay or purge names (a filter has no such bound)."""
FILTER_KEYS = ("state", "source", "handler", "event_type")

# Why an id was not acted on, by the state its deliveries are in.
_REPLAY_REFUSALS = {
    "running": "it is being delivered right now; replay it once that attempt has ended",
    "pending": "it is already waiting for its next attempt",
    "done": "its handler succeeded; only dead deliveries are replayed",
}
_PURGE_REFUSALS = {
    "running": "it is being delivered right now; only dead deliveries are purged",
    "pending": "it is waiting for its next attempt; only dead deliveries are purged",
    "done": "its handler succeeded; done deliveries are purged after [spool] keep_done",
}


class InvalidRequest(QueueError):
    """What the operator asked for cannot be done as asked: ``word`` names the problem
    (the admin API's ``error``), the message says what to change."""

    def __init__(self, word: str, message: str) -> None:
        super().__init__(message)
        self.word = word


class Refused(TypedDict):
    """An id named in a replay or purge that was not acted on, and why."""

    id: str
    state: str
    reason: str


def public_id(delivery_id: DeliveryId) -> str:
    """A store's delivery id as the admin API shows it: opaque and URL-safe."""
    return base64.urlsafe_b64encode(str(delivery_id).encode()).rstrip(b"=").decode()


def store_id(public: str) -> str | None:
    """The store's delivery id behind a `public_id`, None if ``public`` is not one."""
    try:
        raw = base64.urlsafe_b64decode((public + "=" * (-len(public) % 4)).encode("ascii"))
        text = raw.decode()
    except (ValueError, UnicodeError, binascii.Error):
        return None
    return text if text and public_id(text) == public else None


def parse_filter(values: Mapping[str, Any]) -> DeliveryFilter:
    """The `DeliveryFilter` of a query or a request body; raise `InvalidRequest` for a
    key that is no filter's, a value that is not a string, or an unknown state."""
    fields: dict[str, str | None] = {}
    for key, value in values.items():
        if key not in FILTER_KEYS:
            raise InvalidRequest("bad_filter", f"{key!r} is not a filter; use {FILTER_KEYS}")
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise InvalidRequest("bad_filter", f"{key} must be a string of up to 256 characters")
        fields[key] = value or None
    if fields.get("state") is not None and fields["state"] not in STATES:
        raise InvalidRequest("bad_filter", f"state must be one of {', '.join(STATES)}")
    return DeliveryFilter(**fields)


async def stats(store: SpoolBackend) -> QueueStats:
    """Deliveries per state, per source and per handler (dead letters included), and the
    age of the oldest due pending one."""
    return await store.stats()


async def list_page(
    store: SpoolBackend, wanted: DeliveryFilter, limit: int, cursor: str | None
) -> DeliveryPage:
    """A page of the deliveries ``wanted``, newest event first; raise `InvalidRequest` for
    a limit out of range or a cursor the store did not make."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest("bad_limit", f"limit must be from 1 to {MAX_LIMIT}")
    try:
        return await store.list_page(wanted, limit, cursor)
    except BadCursor as exc:
        raise InvalidRequest("bad_cursor", str(exc)) from None


async def delivery(store: SpoolBackend, delivery_id: str) -> dict[str, Any] | None:
    """One delivery, its event (what was received, without the signature) and the
    outcome of its last attempt, the one the store keeps; None if there is no such
    delivery."""
    event_id = await store.event_of(delivery_id)
    detail: EventDetail | None = await store.show(event_id) if event_id is not None else None
    if detail is None:
        return None
    found = [row for row in detail["deliveries"] if str(row["id"]) == delivery_id.strip()]
    if not found:
        return None
    row = found[0]
    attempts = []
    if row["last_outcome"] is not None:
        attempts.append(
            {
                "attempt": row["attempts"],
                "outcome": row["last_outcome"],
                "error": row["last_error"],
                "seconds": row["last_seconds"],
                "at": row["updated_at"],
            }
        )
    return {
        **row,
        "event": {key: value for key, value in detail.items() if key != "deliveries"},
        "attempts": attempts,
        "siblings": [other for other in detail["deliveries"] if other["id"] != row["id"]],
    }


def _check_ids(ids: Any) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(item, str) and item for item in ids):
        raise InvalidRequest("bad_ids", "ids must be a list of delivery ids (strings)")
    if len(ids) > MAX_IDS:
        raise InvalidRequest("bad_ids", f"at most {MAX_IDS} ids at a time; use a filter")
    return ids


def _outcome(word: str, results: list[ItemResult], refusals: Mapping[str, str]) -> dict[str, Any]:
    """The answer to a replay or purge by ids: how many, then what was not done, and why."""
    refused: list[Refused] = []
    unknown: list[str] = []
    for result in results:
        if result["count"]:
            continue
        state = result["state"]
        if state is None:
            unknown.append(result["id"])
        else:
            refused.append(
                {"id": result["id"], "state": state, "reason": refusals.get(state, state)}
            )
    answer: dict[str, Any] = {word: sum(result["count"] for result in results)}
    if refused:
        answer["refused"] = refused
    if unknown:
        answer["unknown"] = unknown
    return answer


def _dead_only(wanted: DeliveryFilter, verb: str) -> DeliveryFilter:
    if wanted.state not in (None, "dead"):
        raise InvalidRequest("bad_filter", f"only dead deliveries are {verb}; state must be dead")
    return wanted


async def replay(
    store: SpoolBackend, *, ids: Sequence[str] | None = None, wanted: DeliveryFilter | None = None
) -> dict[str, Any]:
    """Make dead deliveries pending again, due now, attempts reset: those of ``ids``
    (delivery or event ids), each on its own, or every one ``wanted`` matches.

    The answer is ``{"replayed": n}``, plus ``refused`` (each id whose deliveries are not
    dead, with its state and why: one running is never replayed under its worker) and
    ``unknown`` (ids that name nothing), when there are any.
    """
    if ids is not None:
        return _outcome("replayed", await store.replay_items(_check_ids(ids)), _REPLAY_REFUSALS)
    if wanted is None:
        raise InvalidRequest("nothing_named", "name delivery ids, or a filter")
    return {"replayed": await store.replay_matching(_dead_only(wanted, "replayed"))}


async def purge(
    store: SpoolBackend,
    *,
    ids: Sequence[str] | None = None,
    wanted: DeliveryFilter | None = None,
    older_than: float = 0.0,
) -> dict[str, Any]:
    """Delete dead deliveries, and events left with nothing of theirs: those of ``ids``,
    each on its own, or those ``wanted`` matches that died more than ``older_than``
    seconds ago. Answered as `replay` is, with ``purged``."""
    if ids is not None:
        return _outcome("purged", await store.purge_items(_check_ids(ids)), _PURGE_REFUSALS)
    if wanted is None:
        raise InvalidRequest("nothing_named", "name delivery ids, or a filter")
    return {"purged": await store.purge_matching(_dead_only(wanted, "purged"), older_than)}
