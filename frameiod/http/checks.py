"""The checks every webhook and custom-action request goes through, and the answer to a refusal.

The checks run in a fixed order (size, source, signature, content type, JSON, payload
shape), and every refusal is one `Rejection` mapped to a status code, a log line and a
metric in one place (`refuse`). `guarded` wraps a route: the address check first, the
acknowledgement deadline, the count of requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from frameiod.http.aiohttp_hooks import body_deadline
from frameiod.http.live import Live, SourceKeys
from frameiod.http.receiver import RECEIVER, Receiver
from frameiod.logs import get_logger
from frameiod.metrics import UNKNOWN_SOURCE
from frameiod.ratelimit import is_within, retry_after_header
from frameiod.signature import SignatureError, Verified, verify
from frameiod.store.base import SpoolUnavailable

__all__ = ["Rejection", "answer_malformed", "guarded", "over_rate", "verify_request"]

log = get_logger("frameiod.server")

RETRY_AFTER_SECONDS = "5"
# What the parser says about a malformed request can quote the request itself: bound it.
_DETAIL_CHARS = 200


class Rejection(Exception):
    """A request refused at one of the checks: what to answer, count and log."""

    def __init__(
        self,
        status: int,
        outcome: str,
        reason: str,
        detail: str = "",
        *,
        public: str | None = None,
        retry_after: str = RETRY_AFTER_SECONDS,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        # 401s tell the sender nothing about which check failed; the log says it.
        self.public = public if public is not None else reason


async def _read_body(request: web.Request, limit: int, read_timeout: float) -> bytes:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        # Compressed bodies are refused, not inflated: a small gzip can inflate to gigabytes.
        raise Rejection(
            415,
            "malformed",
            "compressed_body",
            f"Content-Encoding {encoding!r} is not accepted; send the body as is",
        )
    length = request.content_length
    if length is not None and length > limit:
        raise Rejection(413, "too_large", "too_large", f"Content-Length {length} > {limit} bytes")
    if request.content.is_eof():
        # The whole body came in with the headers (a webhook usually does): nothing to
        # wait for, so no deadline timer to arm (arming one is costly at this rate).
        body = request.content.read_nowait()
        if len(body) > limit:
            raise Rejection(413, "too_large", "too_large", f"body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(body_deadline(request, read_timeout)):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise Rejection(413, "too_large", "too_large", f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # Over for us: else aiohttp lingers on it after our answer, and logs its error
        # again with a traceback.
        request.content.feed_eof()
        raise _malformed_http(exc) from None
    except TimeoutError:
        raise Rejection(
            408,
            "too_slow",
            "read_timeout",
            f"the request was not complete within {read_timeout:g}s",
        ) from None
    return b"".join(chunks)


def _malformed_http(exc: BaseException) -> Rejection:
    """HTTP the parser refused (two ``Content-Length``, a broken chunk, an overlong line);
    ``exc`` is its error, or a `web.RequestPayloadError` caused by it."""
    cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
    message = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
    detail = " ".join(str(message).split())[:_DETAIL_CHARS]
    return Rejection(400, "malformed", "malformed_http", detail)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


@dataclass(frozen=True, slots=True)
class _Verified:
    source: SourceKeys
    verified: Verified
    body: bytes


async def verify_request(
    request: web.Request,
    receiver: Receiver,
    live: Live,
    source_name: str,
    deadline: asyncio.Timeout,
    *,
    take_token: bool = True,
) -> _Verified:
    """The checks webhooks and custom actions share, in order; raise `Rejection`.

    ``take_token=False``: the source's token is taken later, by the store in the accept
    (`frameiod.ratelimit.SourceLimits.taken_on_accept`), which answers `over_rate`'s 429.

    Once the body has arrived, ``deadline`` is armed at ``[server] ack_deadline``: the
    calls to the store that follow (the shared rate limit here, the commit after) must end
    by then (see `guarded`).
    """
    if receiver.stopping:
        raise Rejection(503, "unavailable", "shutting_down")
    server = live.config.server
    body = await _read_body(request, server.max_body_bytes, server.read_timeout)
    deadline.reschedule(asyncio.get_running_loop().time() + server.ack_deadline)

    source = live.sources.get(source_name)
    if source is None:
        raise Rejection(404, "unknown_source", "unknown_source", f"no source {source_name!r}")

    try:
        verified = verify(request.headers, body, source.secrets, source.tolerance, receiver.clock)
    except SignatureError as exc:
        outcome = "stale" if exc.is_stale else "bad_signature"
        raise Rejection(401, outcome, exc.reason, exc.detail, public="unauthorized") from None

    # Only verified deliveries spend a source's budget: forgeries cannot exhaust it.
    if take_token:
        try:
            wait = await live.limiter.take(source_name)
        except SpoolUnavailable as exc:
            raise Rejection(503, "unavailable", exc.reason, exc.detail) from None
        if wait:
            raise over_rate(receiver, source_name, wait)

    if "Content-Type" in request.headers and not _is_json(request.content_type):
        raise Rejection(
            415,
            "malformed",
            "unsupported_media_type",
            f"Content-Type {request.content_type!r} is not JSON",
        )
    return _Verified(source, verified, body)


def over_rate(receiver: Receiver, source_name: str, wait: float) -> Rejection:
    """The 429 for a source over its rate, counted; ``wait`` is its Retry-After."""
    receiver.metrics.rate_limited.labels(source=source_name).inc()
    return Rejection(
        429,
        "rate_limited",
        "source_rate_limited",
        f"source {source_name!r} is over its rate",
        retry_after=retry_after_header(wait),
    )


# Refusals that count against the sender's address (the issue: 401, 400, 413).
_COUNTED_AGAINST_ADDRESS = frozenset({400, 401, 413})


def _check_address(receiver: Receiver, live: Live, address: str) -> None:
    """Raise the 429 for an address that spent its budget of refused requests."""
    wait = live.addresses.blocked(address)
    if wait:
        receiver.metrics.unauthenticated_rejected.labels(reason="address_limited").inc()
        raise Rejection(
            429,
            "rate_limited",
            "address_rate_limited",
            "too many refused requests from this address",
            retry_after=retry_after_header(wait),
        )


def refuse(
    receiver: Receiver,
    live: Live,
    exc: Rejection,
    *,
    kind: str,
    source_name: str,
    address: str,
    seconds: float,
    charge: bool = True,
) -> web.Response:
    """Answer, log and count a `Rejection`; charge ``address`` for it if ``charge``."""
    if exc.status in _COUNTED_AGAINST_ADDRESS:
        if charge:
            live.addresses.refused(address)
        receiver.metrics.unauthenticated_rejected.labels(reason=exc.outcome).inc()
    # No outcome: an unknown action, which frameiod_actions_total counts instead.
    if exc.outcome and kind == "action":  # the received series counts webhooks only
        receiver.metrics.action_rejected(source_name, exc.outcome)
    elif exc.outcome:
        receiver.metrics.received(source_name, exc.outcome, seconds)
    log.warning(
        f"{kind} rejected",
        source=source_name,
        status=exc.status,
        outcome=exc.outcome,
        reason=exc.reason,
        detail=exc.detail,
        remote=address,
        duration_ms=round(seconds * 1000, 3),
    )
    body = {"error": exc.public}
    if exc.status != 401 and exc.detail:
        body["detail"] = exc.detail
    headers = {"Retry-After": exc.retry_after} if exc.status in (429, 503) else None
    response = web.json_response(body, status=exc.status, headers=headers)
    if exc.status in (408, 413, 415) or exc.reason == "malformed_http":
        # The rest of the body may still be on its way, or the parser lost its place.
        response.force_close()
    return response


async def guarded(
    request: web.Request,
    kind: str,
    work: Callable[[Receiver, Live, str, asyncio.Timeout], Awaitable[web.Response]],
) -> web.Response:
    """Run ``work``; answer, log and count a `Rejection`; track requests in flight.

    ``work`` gets the acknowledgement deadline, unarmed (`verify_request` arms it): Frame.io gives
    up after 5 s and sends again, so a store held up (a lock held by another process, a
    stalled disk or Redis) is answered 503 ``spool_busy`` in time rather than late. One
    timer per request covers every store call of it.
    """
    started = time.perf_counter()
    receiver = request.app[RECEIVER]
    live = receiver.live
    source_name = request.match_info["source"]
    address = live.sender(request)
    receiver.in_flight += 1
    try:
        # Checked before anything is read or verified: a flood of bad requests is cheap.
        _check_address(receiver, live, address)
        try:
            async with asyncio.timeout(None) as deadline:
                return await work(receiver, live, source_name, deadline)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: a bug, answered 500 by aiohttp as any other
            seconds = live.config.server.ack_deadline
            detail = f"the spool did not answer within the {seconds:g}s acknowledgement deadline"
            raise Rejection(503, "unavailable", "spool_busy", detail) from None
    except Rejection as exc:
        return refuse(
            receiver,
            live,
            exc,
            kind=kind,
            source_name=source_name,
            address=address,
            seconds=time.perf_counter() - started,
        )
    finally:
        receiver.in_flight -= 1
        if receiver.in_flight == 0:
            receiver.idle.set()


def answer_malformed(
    app: web.Application, request: web.BaseRequest, error: HttpProcessingError
) -> web.Response:
    """The answer to HTTP that aiohttp's parser refused before any route saw it.

    Answered, logged and counted like every other refusal (JSON 400, outcome
    ``malformed`` under source ``unknown``), and charged to the sender's address, which
    gets 429 once its budget is spent. The headers were never parsed, so a trusted
    proxy's ``X-Forwarded-For`` cannot be read: such a request is answered and counted,
    but charged to nobody, or a proxy's clients would all pay for one of them.
    """
    started = time.perf_counter()
    receiver = app[RECEIVER]
    live = receiver.live
    address = request.remote or "unknown"
    charge = not is_within(address, live.proxies)
    try:
        if charge:
            _check_address(receiver, live, address)
    except Rejection as limited:
        rejection = limited
    else:
        rejection = _malformed_http(error)
    response = refuse(
        receiver,
        live,
        rejection,
        kind="request",
        source_name=UNKNOWN_SOURCE,
        address=address,
        seconds=time.perf_counter() - started,
        charge=charge,
    )
    response.force_close()  # the 429 too: the parser has lost its place in the stream
    return response
