"""The aiohttp application: receive, verify, validate and answer Frame.io's requests.

``POST /webhooks/{source}`` and ``POST /actions/{source}`` run the same checks in a fixed
order (size, source, signature, content type, JSON, payload shape), and every refusal is
one `Rejection` mapped to a status code, a log line and a metric in one place. An accepted
webhook is committed to the spool, with one delivery per matching handler, before the 202
goes out; a custom action is answered by its handler (`frameiod.http.actions`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.aiohttp import make_aiohttp_handler

from frameiod.config import Config
from frameiod.events import (
    PayloadError,
    WebhookEvent,
    check_webhook,
    parse_action,
    parse_webhook,
)
from frameiod.http.actions import ActionRunner
from frameiod.http.connections import body_deadline
from frameiod.ids import new_event_id
from frameiod.logs import get_logger
from frameiod.metrics import UNKNOWN_SOURCE, Metrics
from frameiod.plugins.routing import Routes
from frameiod.ratelimit import (
    AddressLimiter,
    Clock,
    Limits,
    Networks,
    SourceLimiter,
    SourceLimits,
    client_address,
    is_within,
    networks,
    retry_after,
)
from frameiod.secret_ids import secret_id
from frameiod.signature import SignatureError, Verified, verify
from frameiod.store.base import Incoming, SpoolBackend, SpoolUnavailable

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "STATE",
    "ServerState",
    "SourceKeys",
    "answer_malformed",
    "create_app",
    "source_keys",
]

log = get_logger("frameiod.server")

# In-flight requests get this long to finish after SIGTERM before their connections close.
SHUTDOWN_TIMEOUT = 10.0
RETRY_AFTER_SECONDS = "5"
# What the parser says about a malformed request can quote the request itself: bound it.
_DETAIL_CHARS = 200
# How long /readyz waits for the spool. A probe must answer even when the store does not:
# before a Redis command's own 2-s timeout, and before a prober's own (Kubernetes': 1 s).
# A store this slow to answer one small write is not ready.
READY_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class SourceKeys:
    """What verifying a source's deliveries takes: its secrets (configured ones first, then
    those declared on its handlers), their routing tags, and the clock tolerance."""

    secrets: tuple[str, ...]
    ids: tuple[str, ...]
    tolerance: float


def source_keys(config: Config, routes: Routes) -> dict[str, SourceKeys]:
    """Every source the daemon accepts: configured ones, plus any a handler's secret implies."""
    configured = {name: source.secret_values() for name, source in config.sources.items()}
    return {
        name: SourceKeys(
            secrets=tuple(secrets),
            ids=tuple(secret_id(secret) for secret in secrets),
            tolerance=config.source(name).tolerance,
        )
        for name, secrets in routes.merged_secrets(configured).items()
    }


@dataclass(frozen=True)
class Live:
    """What a reload replaces, as one object: a request takes it once at its start, so it
    never sees half of an old configuration and half of a new one."""

    config: Config
    sources: Mapping[str, SourceKeys]
    limiter: SourceLimits
    addresses: AddressLimiter
    proxies: Networks
    """``[server] trusted_proxies``, parsed once (every request asks who sent it)."""

    @classmethod
    def build(
        cls,
        config: Config,
        routes: Routes,
        clock: Clock = time.monotonic,
        limiter: Callable[[Limits], SourceLimits] | None = None,
    ) -> Live:
        """Everything derived from ``config`` (and the secrets ``routes`` declare).

        ``limiter`` builds the per-source limiter (default: in memory, on ``clock``).
        """
        sources = source_keys(config, routes)
        limits = {name: (config.source(name).rate, config.source(name).burst) for name in sources}
        server = config.server
        return cls(
            config=config,
            sources=sources,
            limiter=limiter(limits) if limiter else SourceLimiter(limits, clock),
            addresses=AddressLimiter(
                server.unauthenticated_failures, server.max_tracked_addresses, clock
            ),
            proxies=networks(server.trusted_proxies),
        )


@dataclass
class ServerState:
    """Everything a request handler needs, stored on the Application under `STATE`."""

    live: Live
    routes: Routes
    spool: SpoolBackend
    metrics: Metrics
    clock: Callable[[], float] = time.time
    observe: Callable[[WebhookEvent, str], None] | None = None
    """Told of each newly accepted event (the daemon passes it on to observer plugins)."""
    actions: ActionRunner = field(default_factory=ActionRunner)
    ready: bool = False
    stopping: bool = False
    addresses: list[tuple[str, int]] = field(default_factory=list)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    spool_problem: str | None = None
    """Why the spool was not ready at the last ``/readyz``, if it was not (for the log)."""

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self.live.config

    @property
    def sources(self) -> Mapping[str, SourceKeys]:
        """The sources in force, with their secrets."""
        return self.live.sources

    async def drain(self) -> None:
        """Wait until no webhook request is in flight (bound it with ``asyncio.timeout``)."""
        if self.in_flight:
            self.idle.clear()
            await self.idle.wait()


STATE = web.AppKey("state", ServerState)


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
        # wait for, so no deadline timer to arm. Profiling put that at ~13 % of ingest.
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


async def _verify(
    request: web.Request,
    state: ServerState,
    live: Live,
    source_name: str,
    deadline: asyncio.Timeout,
) -> _Verified:
    """The checks webhooks and custom actions share, in order; raise `Rejection`.

    Once the body has arrived, ``deadline`` is armed at ``[server] ack_deadline``: the
    calls to the store that follow (the shared rate limit here, the commit after) must end
    by then (see `_guarded`).
    """
    if state.stopping:
        raise Rejection(503, "unavailable", "shutting_down")
    server = live.config.server
    body = await _read_body(request, server.max_body_bytes, server.read_timeout)
    deadline.reschedule(asyncio.get_running_loop().time() + server.ack_deadline)

    source = live.sources.get(source_name)
    if source is None:
        raise Rejection(404, "unknown_source", "unknown_source", f"no source {source_name!r}")

    try:
        verified = verify(request.headers, body, source.secrets, source.tolerance, state.clock)
    except SignatureError as exc:
        outcome = "stale" if exc.is_stale else "bad_signature"
        raise Rejection(401, outcome, exc.reason, exc.detail, public="unauthorized") from None

    # Only verified deliveries spend a source's budget: forgeries cannot exhaust it.
    try:
        wait = await live.limiter.take(source_name)
    except SpoolUnavailable as exc:
        raise Rejection(503, "unavailable", exc.reason, exc.detail) from None
    if wait:
        state.metrics.rate_limited.labels(source=source_name).inc()
        raise Rejection(
            429,
            "rate_limited",
            "source_rate_limited",
            f"source {source_name!r} is over its rate",
            retry_after=retry_after(wait),
        )

    if "Content-Type" in request.headers and not _is_json(request.content_type):
        raise Rejection(
            415,
            "malformed",
            "unsupported_media_type",
            f"Content-Type {request.content_type!r} is not JSON",
        )
    return _Verified(source, verified, body)


# Refusals that count against the sender's address (the issue: 401, 400, 413).
_COUNTED_AGAINST_ADDRESS = frozenset({400, 401, 413})


def _check_address(state: ServerState, live: Live, address: str) -> None:
    """Raise the 429 for an address that spent its budget of refused requests."""
    wait = live.addresses.blocked(address)
    if wait:
        state.metrics.unauthenticated_rejected.labels(reason="address_limited").inc()
        raise Rejection(
            429,
            "rate_limited",
            "address_rate_limited",
            "too many refused requests from this address",
            retry_after=retry_after(wait),
        )


def _refuse(
    state: ServerState,
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
        state.metrics.unauthenticated_rejected.labels(reason=exc.outcome).inc()
    # No outcome: an unknown action, which frameiod_actions_total counts instead.
    if exc.outcome and kind == "action":  # the received series counts webhooks only
        state.metrics.action_rejected(source_name, exc.outcome)
    elif exc.outcome:
        state.metrics.received(source_name, exc.outcome, seconds)
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


async def _guarded(
    request: web.Request,
    kind: str,
    work: Callable[[ServerState, Live, str, asyncio.Timeout], Awaitable[web.Response]],
) -> web.Response:
    """Run ``work``; answer, log and count a `Rejection`; track requests in flight.

    ``work`` gets the acknowledgement deadline, unarmed (`_verify` arms it): Frame.io gives
    up after 5 s and sends again, so a store held up (a lock held by another process, a
    stalled disk or Redis) is answered 503 ``spool_busy`` in time rather than late. One
    timer per request covers every store call of it.
    """
    started = time.perf_counter()
    state = request.app[STATE]
    live = state.live
    source_name = request.match_info["source"]
    address = client_address(request.remote, request.headers.get("X-Forwarded-For"), live.proxies)
    state.in_flight += 1
    try:
        # Checked before anything is read or verified: a flood of bad requests is cheap.
        _check_address(state, live, address)
        try:
            async with asyncio.timeout(None) as deadline:
                return await work(state, live, source_name, deadline)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: a bug, answered 500 by aiohttp as any other
            seconds = live.config.server.ack_deadline
            detail = f"the spool did not answer within the {seconds:g}s acknowledgement deadline"
            raise Rejection(503, "unavailable", "spool_busy", detail) from None
    except Rejection as exc:
        return _refuse(
            state,
            live,
            exc,
            kind=kind,
            source_name=source_name,
            address=address,
            seconds=time.perf_counter() - started,
        )
    finally:
        state.in_flight -= 1
        if state.in_flight == 0:
            state.idle.set()


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
    state = app[STATE]
    live = state.live
    address = request.remote or "unknown"
    charge = not is_within(address, live.proxies)
    try:
        if charge:
            _check_address(state, live, address)
    except Rejection as limited:
        rejection = limited
    else:
        rejection = _malformed_http(error)
    response = _refuse(
        state,
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


async def receive_webhook(request: web.Request) -> web.Response:
    """``POST /webhooks/{source}``: 202 with the event id once the event is on disk, or 200
    with the original's id for a duplicate."""
    started = time.perf_counter()

    async def accept(
        state: ServerState, live: Live, source_name: str, deadline: asyncio.Timeout
    ) -> web.Response:
        checked = await _verify(request, state, live, source_name, deadline)
        event_id = new_event_id()
        observe = state.observe
        event: WebhookEvent | None = None
        try:
            # The event itself is built only for observers; handlers get theirs at dispatch.
            if observe is None:
                event_type = check_webhook(checked.body)
            else:
                event = parse_webhook(checked.body, checked.verified.timestamp, event_id)
                event_type = event.type
        except PayloadError as exc:
            raise Rejection(exc.status, "malformed", exc.reason, exc.detail) from None
        incoming = Incoming(
            id=event_id,
            source=source_name,
            type=event_type,
            body=checked.body,
            timestamp=checked.verified.timestamp,
            signature=checked.verified.signature,
            secret_id=checked.source.ids[checked.verified.secret_index],
            received_at=state.clock(),
        )
        handlers = state.routes.for_delivery(source_name, event_type, incoming.secret_id)
        # An accept is one transaction (one script on Redis): cut off at the deadline, it
        # is kept whole or not at all, and a resend of a kept one is answered duplicate.
        try:
            accepted = await state.spool.accept(incoming, [h.key for h in handlers])
        except SpoolUnavailable as exc:
            raise Rejection(503, "unavailable", exc.reason, exc.detail) from None
        deadline.reschedule(None)  # committed: the answer goes out whatever the time
        if observe is not None and event is not None and not accepted.duplicate:
            observe(event, source_name)

        seconds = time.perf_counter() - started
        outcome, status = ("duplicate", 200) if accepted.duplicate else ("accepted", 202)
        state.metrics.received(source_name, outcome, seconds)
        log.info(
            f"webhook {outcome}",
            source=source_name,
            event_type=event_type,
            event_id=accepted.id,
            handlers=accepted.deliveries,
            status=status,
            outcome=outcome,
            remote=request.remote,
            duration_ms=round(seconds * 1000, 3),
        )
        # Written out rather than through json_response (~2 % of ingest): both values are
        # frameiod's own, a fixed word and a UUID, with nothing to escape.
        answer = f'{{"status": "{outcome}", "id": "{accepted.id}"}}'
        return web.Response(text=answer, status=status, content_type="application/json")

    return await _guarded(request, "webhook", accept)


async def receive_action(request: web.Request) -> web.Response:
    """``POST /actions/{source}``: verified like a webhook, then answered by the action's
    handler: 200 with its `Message` or `Form` as JSON, or an empty 200."""

    async def act(
        state: ServerState, live: Live, source_name: str, deadline: asyncio.Timeout
    ) -> web.Response:
        checked = await _verify(request, state, live, source_name, deadline)
        deadline.reschedule(None)  # the action's own deadline governs its handler
        try:
            event = parse_action(checked.body, checked.verified.timestamp)
        except PayloadError as exc:
            raise Rejection(exc.status, "malformed", exc.reason, exc.detail) from None
        handler = state.routes.action(source_name, event.type)
        if handler is None:
            # Only now, after the signature: a forged request learns nothing.
            state.metrics.action(source_name, "unknown", "unknown_action")
            raise Rejection(404, "", "unknown_action", f"no handler for action {event.type!r}")
        source = live.config.source(source_name)
        answer = await state.actions.run(
            handler,
            event,
            request_id=new_event_id(),
            deadline=source.action_deadline,
            late_message=source.action_late_message,
        )
        state.metrics.action(source_name, handler.action, answer.outcome)
        if answer.body is None:
            return web.Response(status=200)
        return web.json_response(answer.body)

    return await _guarded(request, "action", act)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 while the process runs."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 once serving with a spool that can take deliveries; 503 before
    that, while stopping, and while the spool cannot (naming why)."""
    state = request.app[STATE]
    if not state.ready or state.stopping:
        status = "stopping" if state.stopping else "starting"
        return web.json_response({"status": status}, status=503)
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            await state.spool.check()
    except SpoolUnavailable as exc:
        reason, detail = exc.reason, exc.detail
    except TimeoutError:
        reason = "spool_timeout"
        detail = f"the spool did not answer within {READY_CHECK_SECONDS:g}s"
    else:
        if state.spool_problem is not None:
            log.info("spool ready again", spool=state.spool.describe())
            state.spool_problem = None
        return web.json_response({"status": "ready"})
    # Logged when the cause changes, not at every probe: load balancers ask every few seconds.
    if reason != state.spool_problem:
        log.warning("spool not ready", spool=state.spool.describe(), reason=reason, detail=detail)
        state.spool_problem = reason
    body = {"status": "spool_unavailable", "reason": reason, "detail": detail}
    return web.json_response(body, status=503)


def create_app(
    config: Config,
    *,
    spool: SpoolBackend,
    metrics: Metrics,
    routes: Routes | None = None,
    clock: Callable[[], float] = time.time,
    observe: Callable[[WebhookEvent, str], None] | None = None,
    limiter: Callable[[Limits], SourceLimits] | None = None,
) -> web.Application:
    """Build the aiohttp application; all state lives on it under `STATE`.

    ``routes`` decides which handlers get a delivery, and contributes the secrets declared
    on handlers (see `source_keys`); ``limiter`` builds the per-source rate limiter
    (default: in memory).
    """
    app = web.Application()
    routes = routes or Routes(())
    live = Live.build(config, routes, limiter=limiter)
    metrics.add_sources(live.sources)
    app[STATE] = ServerState(
        live=live,
        routes=routes,
        spool=spool,
        metrics=metrics,
        clock=clock,
    )
    app[STATE].observe = observe
    app.router.add_post("/webhooks/{source}", receive_webhook)
    app.router.add_post("/actions/{source}", receive_action)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.metrics.enabled:
        app.router.add_get(config.metrics.path, make_aiohttp_handler(metrics.registry))
    return app
