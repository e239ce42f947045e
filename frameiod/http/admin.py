"""The operator's listener (``[admin]``): a JSON API for everything ``frameiod queue`` does,
the page on top of it (`frameiod.http.admin_page`), and ``/metrics`` when it moved here.

Its own application, served on its own socket beside the webhook listener, never on it.
Every ``/api/`` request needs ``Authorization: Bearer <[admin] token>``; a missing or
wrong one is 401 and spends the address's ``unauthenticated_failures`` budget, the one
bad signatures spend on the webhook listener. The token, like that budget, is read from
the configuration in force at each request, so a reload changes it. Each operation is
`frameiod.store.operator`'s, the one ``frameiod queue`` carries out; this module only
translates: query and body in, delivery ids to and from their URL-safe form, JSON out.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from frameiod.http.admin_page import add_page_routes
from frameiod.http.receiver import RECEIVER, Receiver
from frameiod.logs import get_logger
from frameiod.ratelimit import retry_after_header
from frameiod.store import operator
from frameiod.store.base import QueueError
from frameiod.terminal import cut

__all__ = ["ERROR_CHARS", "admin_app"]

log = get_logger("frameiod.admin")

ERROR_CHARS = 300
"""A listed delivery's last error is cut to this (the delivery's own page shows it whole)."""
_BODY_LIMIT = 256 * 1024
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[web.Request, Receiver], Awaitable[Any]]


class _Refusal(Exception):
    """An API request answered with an error: status, the ``error`` word, a detail."""

    def __init__(self, status: int, word: str, detail: str = "") -> None:
        super().__init__(detail or word)
        self.status = status
        self.word = word
        self.detail = detail


_OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 429: "rate_limited"}


def _answer(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers={**_API_HEADERS, **(headers or {})})


def _authenticate(request: web.Request, receiver: Receiver, address: str) -> None:
    """Raise the 429 of an address that spent its budget, or the 401 of a missing or wrong
    token (charged to the address)."""
    live = receiver.live
    wait = live.addresses.blocked(address)
    if wait:
        receiver.metrics.unauthenticated_rejected.labels(reason="address_limited").inc()
        raise _Refusal(429, "rate_limited", "too many refused requests from this address")
    token = live.config.admin.token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.reveal().encode() if token is not None else b""
    # compare_digest on bytes: a str holding non-ASCII would raise instead of comparing.
    if not (
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
    ):
        live.addresses.refused(address)
        receiver.metrics.unauthenticated_rejected.labels(reason="admin_token").inc()
        why = "no bearer token" if not given else "wrong token"
        raise _Refusal(401, "unauthorized", why)


def _api(action: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An API route: authenticated, its refusals answered, logged and counted."""

    async def route(request: web.Request) -> web.Response:
        receiver = request.app[RECEIVER]
        live = receiver.live
        address = live.sender(request)
        started = time.perf_counter()
        try:
            _authenticate(request, receiver, address)
            try:
                data = await handler(request, receiver)
            except operator.InvalidRequest as exc:
                raise _Refusal(400, exc.word, str(exc)) from None
            except QueueError as exc:
                raise _Refusal(503, "unavailable", str(exc)) from None
        except _Refusal as exc:
            outcome = _OUTCOMES.get(exc.status, "unavailable")
            receiver.metrics.admin_requests.labels(action=action, outcome=outcome).inc()
            log.warning(
                "admin request refused",
                action=action,
                status=exc.status,
                error=exc.word,
                detail=exc.detail,
                remote=address,
            )
            body = {"error": exc.word}
            if exc.detail and exc.status != 401:
                body["detail"] = exc.detail
            headers = {"WWW-Authenticate": 'Bearer realm="frameiod"'} if exc.status == 401 else {}
            if exc.status in (429, 503):
                headers["Retry-After"] = retry_after_header(5.0)
            return _answer(exc.status, body, headers)
        receiver.metrics.admin_requests.labels(action=action, outcome="ok").inc()
        if action in ("replay", "purge"):
            # What an operator changed is on record, with who asked (by address).
            log.info(
                f"admin {action}",
                remote=address,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                **{k: v if isinstance(v, int) else len(v) for k, v in data.items()},
            )
        return _answer(200, data)

    return route


def _public_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "id": operator.public_id(row["id"])}


def _cut(error: str | None) -> str | None:
    return None if error is None else cut(error, ERROR_CHARS)


async def _stats(request: web.Request, receiver: Receiver) -> dict[str, Any]:
    stats = await operator.stats(receiver.spool)
    dead = {name: counts["dead"] for name, counts in stats["handlers"].items() if counts["dead"]}
    return {**stats, "dead_letters": dead}


async def _list(request: web.Request, receiver: Receiver) -> dict[str, Any]:
    query = request.query
    wanted = operator.parse_filter({k: v for k, v in query.items() if k in operator.FILTER_KEYS})
    unknown = sorted(set(query) - {*operator.FILTER_KEYS, "limit", "cursor"})
    if unknown:
        raise operator.InvalidRequest("bad_query", f"unknown parameter {unknown[0]!r}")
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise operator.InvalidRequest("bad_limit", "limit must be a whole number") from None
    page = await operator.list_page(receiver.spool, wanted, limit, query.get("cursor") or None)
    items = [
        {**_public_row(dict(row)), "last_error": _cut(row["last_error"])} for row in page["items"]
    ]
    return {"items": items, "cursor": page["cursor"]}


async def _show(request: web.Request, receiver: Receiver) -> dict[str, Any]:
    public = request.match_info["id"]
    delivery_id = operator.store_id(public)
    found = await operator.delivery(receiver.spool, delivery_id) if delivery_id else None
    if found is None:
        raise _Refusal(404, "not_found", f"no delivery {public}")
    event = dict(found["event"])
    # What came in: the body, and the one header kept besides the signature (never shown).
    event["headers"] = {"X-Frameio-Request-Timestamp": str(event["timestamp"])}
    return {
        **_public_row(found),
        "event": event,
        "siblings": [_public_row(dict(row)) for row in found["siblings"]],
    }


async def _read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > _BODY_LIMIT:
        raise operator.InvalidRequest("too_large", f"a request body is at most {_BODY_LIMIT} bytes")
    raw = await request.content.read(_BODY_LIMIT + 1)
    if len(raw) > _BODY_LIMIT:
        raise operator.InvalidRequest("too_large", f"a request body is at most {_BODY_LIMIT} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise operator.InvalidRequest("malformed", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise operator.InvalidRequest("malformed", 'the body is a JSON object: {"ids": [...]}')
    return body


async def _selection(request: web.Request) -> tuple[list[str] | None, Any, list[str]]:
    """The store ids a replay or purge names, or its filter; and the ids that decode to
    none (reported as unknown)."""
    body = await _read_json(request)
    if "ids" in body:
        if set(body) != {"ids"}:
            raise operator.InvalidRequest("bad_request", "give ids or a filter, not both")
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
            raise operator.InvalidRequest("bad_ids", "ids must be a list of delivery ids")
        known = {public: operator.store_id(public) for public in ids}
        return [v for v in known.values() if v], None, [k for k, v in known.items() if not v]
    if not body:
        raise operator.InvalidRequest("nothing_named", 'name "ids", or a filter such as state')
    return None, operator.parse_filter(body), []


def _published(answer: dict[str, Any], undecodable: list[str]) -> dict[str, Any]:
    """A replay's or purge's answer with the ids given as the operator gave them."""
    for refused in answer.get("refused", ()):
        refused["id"] = operator.public_id(refused["id"])
    unknown = [operator.public_id(item) for item in answer.get("unknown", ())] + undecodable
    if unknown:
        answer["unknown"] = unknown
    return answer


async def _replay(request: web.Request, receiver: Receiver) -> dict[str, Any]:
    ids, wanted, undecodable = await _selection(request)
    answer = await operator.replay(receiver.spool, ids=ids, wanted=wanted)
    return _published(answer, undecodable)


async def _purge(request: web.Request, receiver: Receiver) -> dict[str, Any]:
    ids, wanted, undecodable = await _selection(request)
    answer = await operator.purge(receiver.spool, ids=ids, wanted=wanted)
    return _published(answer, undecodable)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method) as JSON under ``/api/``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        word = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        return _answer(exc.status, {"error": word})


def admin_app(receiver: Receiver) -> web.Application:
    """The admin listener's application, on the running daemon's ``receiver`` (its spool,
    metrics, and the configuration in force)."""
    app = web.Application(middlewares=[_json_errors], client_max_size=_BODY_LIMIT)
    app[RECEIVER] = receiver
    app.router.add_get("/api/stats", _api("stats", _stats))
    app.router.add_get("/api/deliveries", _api("list", _list))
    app.router.add_post("/api/deliveries/replay", _api("replay", _replay))
    app.router.add_post("/api/deliveries/purge", _api("purge", _purge))
    app.router.add_get("/api/deliveries/{id}", _api("show", _show))
    config = receiver.config
    if config.admin.metrics and config.metrics.enabled:
        app.router.add_get(config.metrics.path, make_aiohttp_handler(receiver.metrics.exposed))
    add_page_routes(app)
    return app
