"""``POST /actions/{source}``: verified like a webhook, then answered by the action's
handler (`frameiod.http.actions`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from frameiod.events import PayloadError, parse_action
from frameiod.http.action_repeats import MARGIN_SECONDS
from frameiod.http.checks import Rejection, guarded, verify_request
from frameiod.http.live import Live
from frameiod.http.receiver import Receiver, wrapped_receive
from frameiod.ids import new_event_id
from frameiod.plugins.handlers import Reception

__all__ = ["receive_action"]


async def receive_action(request: web.Request) -> web.Response:
    """``POST /actions/{source}``: verified like a webhook, then answered by the action's
    handler: 200 with its `Message` or `Form` as JSON, or an empty 200."""
    return await wrapped_receive(request, "action", _receive)


async def _receive(request: web.Request, reception: Reception | None) -> web.Response:
    async def act(
        receiver: Receiver, live: Live, source_name: str, deadline: asyncio.Timeout
    ) -> web.Response:
        checked = await verify_request(request, receiver, live, source_name, deadline)
        deadline.reschedule(None)  # the action's own deadline governs its handler
        try:
            event = parse_action(checked.body, checked.verified.timestamp)
        except PayloadError as exc:
            raise Rejection(exc.status, "malformed", exc.reason, exc.detail) from None
        if reception is not None:
            reception.payload = event.model_dump(exclude_none=True)
        handler = receiver.routes.action(source_name, event.type)
        if handler is None:
            # Only now, after the signature: a forged request learns nothing.
            receiver.metrics.action(source_name, "unknown", "unknown_action")
            raise Rejection(404, "", "unknown_action", f"no handler for action {event.type!r}")
        source = live.config.source(source_name)
        verified = checked.verified
        key = (source_name, verified.timestamp, verified.signature)
        window = max(keys.tolerance for keys in live.sources.values()) + MARGIN_SECONDS
        answering = {
            "request_id": new_event_id(),
            "deadline": source.action_deadline,
            "late_message": source.action_late_message,
        }
        earlier = receiver.action_repeats.remember(key, window)
        answer = None
        try:
            answer = await receiver.actions.run(handler, event, earlier=earlier, **answering)
        finally:
            if earlier is None:  # this request is the first: its repeats get its answer
                receiver.action_repeats.settle(key, answer)
        receiver.metrics.action(source_name, handler.action, answer.outcome)
        if answer.body is None:
            return web.Response(status=200)
        return web.Response(text=answer.body, content_type="application/json")

    return await guarded(request, "action", act)
