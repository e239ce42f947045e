"""The spans: one per request received, one per handler call (in the receive's trace,
across the queue), one per custom-action call; each wraps the awaitable frameiod hands
its hook wrappers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from frameiod import ActionEvent, ActionHandler, HandlerTimeout, Reception, WebhookHandler
from frameiod.events import WebhookEvent

__all__ = ["Spans", "event_attributes", "payload_attributes"]

_PROPAGATOR = TraceContextTextMapPropagator()


def event_attributes(event: WebhookEvent | ActionEvent) -> dict[str, str]:
    """The ``frameio.*`` attributes of an event: its type and the ids it names."""
    ids = {
        "frameio.event.type": event.type,
        "frameio.resource.id": event.resource_id,
        "frameio.account.id": event.account_id,
        "frameio.workspace.id": event.workspace.id if event.workspace else None,
        "frameio.project.id": event.project.id if event.project else None,
    }
    return {key: value for key, value in ids.items() if value}


def payload_attributes(payload: Mapping[str, Any]) -> dict[str, str]:
    """The ``frameio.*`` attributes of a request's verified body (webhook or action)."""

    def ref(name: str) -> Any:
        value = payload.get(name)
        return value.get("id") if isinstance(value, Mapping) else None

    ids = {
        "frameio.event.type": payload.get("type"),
        "frameio.resource.id": ref("resource"),
        "frameio.account.id": ref("account") or payload.get("account_id"),
        "frameio.workspace.id": ref("workspace"),
        "frameio.project.id": ref("project"),
    }
    return {key: value for key, value in ids.items() if value and isinstance(value, str)}


def _answered(reception: Reception, status: int) -> dict[str, Any]:
    """What the receive span learns once the route answered."""
    attributes: dict[str, Any] = {"http.response.status_code": status}
    if reception.payload is not None:
        attributes.update(payload_attributes(reception.payload))
    if reception.event_id is not None:
        attributes["frameiod.event_id"] = reception.event_id
    if reception.duplicate:
        attributes["frameiod.duplicate"] = True
    return attributes


def _traceparent(context: trace.SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _failed(span: trace.Span, outcome: str, exc: BaseException) -> None:
    span.set_attribute("frameiod.outcome", outcome)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class Spans:
    """Makes frameiod's spans with ``tracer``."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def receive(self, reception: Reception, call: Awaitable[Any]) -> Any:
        """A SERVER span around one request; a webhook's context is stored with its event."""
        request = reception.request
        headers = request.headers
        route = f"/{reception.kind}s/{{source}}"
        span = self._tracer.start_span(
            f"POST {route}",
            # A sender's traceparent continues its trace; most requests come without one.
            context=_PROPAGATOR.extract(headers) if "traceparent" in headers else None,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
                "frameiod.source": reception.source,
            },
        )
        reception.trace_context = _traceparent(span.get_span_context())
        try:
            if reception.kind == "action":
                # Current while its handler runs: the action's span and API calls go inside.
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    response = await call
            else:
                # Nothing inside a webhook's receive makes spans: no need to make it current.
                response = await call
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
            raise
        if span.is_recording():
            span.set_attributes(_answered(reception, response.status))
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return response

    async def handler_call(
        self,
        event: WebhookEvent,
        handler: WebhookHandler,
        attempt: int,
        trace_context: str | None,
        call: Awaitable[Any],
    ) -> Any:
        """A CONSUMER span around one handler call, in the trace of the receive (and linked
        to its span) when the event was stored with one."""
        parent = Context()
        links = []
        if trace_context:
            parent = _PROPAGATOR.extract({"traceparent": trace_context})
            received = trace.get_current_span(parent).get_span_context()
            if received.is_valid:
                links.append(Link(received))
        attributes: dict[str, Any] = {
            **event_attributes(event),
            "frameiod.handler": handler.name,
            "frameiod.plugin": handler.plugin,
            "frameiod.attempt": attempt,
        }
        if event.event_id:
            attributes["frameiod.event_id"] = event.event_id
        with self._tracer.start_as_current_span(
            f"handle {handler.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call
            except HandlerTimeout as exc:
                _failed(span, "timeout", exc)
                raise
            except Exception as exc:
                _failed(span, "error", exc)
                raise
            except asyncio.CancelledError:
                span.set_attribute("frameiod.outcome", "cut_short")  # the daemon stopped
                raise
            span.set_attribute("frameiod.outcome", "ok")
            return result

    async def action_call(
        self, event: ActionEvent, handler: ActionHandler, call: Awaitable[Any]
    ) -> Any:
        """A span around one custom-action call, inside the request's span."""
        attributes: dict[str, Any] = {
            **event_attributes(event),
            "frameiod.handler": handler.name,
            "frameiod.plugin": handler.plugin,
        }
        with self._tracer.start_as_current_span(
            f"action {handler.action}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call
            except Exception as exc:
                _failed(span, "error", exc)
                raise
            span.set_attribute("frameiod.outcome", "ok")
            return result
