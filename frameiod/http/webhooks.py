"""``POST /webhooks/{source}``: a verified event is committed to the spool, with one
delivery per matching handler, before the 202 goes out."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from frameiod.events import (
    PayloadError,
    WebhookEvent,
    check_webhook,
    parse_webhook,
    webhook_payload,
)
from frameiod.http.checks import Rejection, guarded, over_rate, verify_request
from frameiod.http.live import Live
from frameiod.http.receiver import Receiver, wrapped_receive
from frameiod.ids import new_event_id
from frameiod.logs import get_logger
from frameiod.plugins.handlers import Reception
from frameiod.store.base import Incoming, RateLimited, SpoolUnavailable

__all__ = ["receive_webhook"]

log = get_logger("frameiod.server")


async def receive_webhook(request: web.Request) -> web.Response:
    """``POST /webhooks/{source}``: 202 with the event id once the event is on disk, or 200
    with the original's id for a duplicate."""
    return await wrapped_receive(request, "webhook", _receive)


async def _receive(request: web.Request, reception: Reception | None) -> web.Response:
    started = time.perf_counter()

    async def accept(
        receiver: Receiver, live: Live, source_name: str, deadline: asyncio.Timeout
    ) -> web.Response:
        # On Redis the accept takes the source's token itself: one call to Redis, not two.
        limit = live.limiter.taken_on_accept(source_name)
        checked = await verify_request(
            request, receiver, live, source_name, deadline, take_token=limit is None
        )
        event_id = new_event_id()
        observe = receiver.observe
        event: WebhookEvent | None = None
        try:
            # The event itself is built only for observers; handlers get theirs at dispatch.
            if reception is not None:
                # The same check, its result kept: what a tracing wrapper reads ids from.
                reception.payload = payload = webhook_payload(checked.body)
                event_type = payload["type"]
            elif observe is None:
                event_type = check_webhook(checked.body)
            if observe is not None:
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
            received_at=receiver.clock(),
            limit=limit,
            trace_context=reception.trace_context if reception is not None else None,
        )
        handlers = receiver.routes.for_delivery(source_name, event_type, incoming.secret_id)
        # An accept is one transaction (one script on Redis): cut off at the deadline, it
        # is kept whole or not at all, and a resend of a kept one is answered duplicate.
        try:
            accepted = await receiver.spool.accept(incoming, [h.key for h in handlers])
        except SpoolUnavailable as exc:
            raise Rejection(503, "unavailable", exc.reason, exc.detail) from None
        except RateLimited as exc:
            raise over_rate(receiver, source_name, exc.wait) from None
        deadline.reschedule(None)  # committed: the answer goes out whatever the time
        if observe is not None and event is not None and not accepted.duplicate:
            observe(event, source_name)
        if reception is not None:
            reception.event_id, reception.duplicate = accepted.id, accepted.duplicate

        seconds = time.perf_counter() - started
        outcome, status = ("duplicate", 200) if accepted.duplicate else ("accepted", 202)
        receiver.metrics.received(source_name, outcome, seconds)
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
        # Written out rather than through json_response, which encodes JSON per answer:
        # both values are frameiod's own, a fixed word and a UUID, with nothing to escape.
        answer = f'{{"status": "{outcome}", "id": "{accepted.id}"}}'
        return web.Response(text=answer, status=status, content_type="application/json")

    return await guarded(request, "webhook", accept)
