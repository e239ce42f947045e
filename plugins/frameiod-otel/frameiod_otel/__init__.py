"""frameiod-otel: OpenTelemetry tracing that follows each event across frameiod's queue.

    [plugins.otel]
    endpoint = "http://127.0.0.1:4318"   # OTLP/HTTP; spans go to {endpoint}/v1/traces
    service_name = "frameiod"
    headers = {}                          # e.g. { authorization = "env:OTLP_TOKEN" }
    sample_ratio = 1.0

One trace per event: a SERVER span for the ``POST`` that brought it (continuing a
sender's ``traceparent``), whose context is stored with the event in the spool; a
CONSUMER span per handler call, seconds or hours later, retries as siblings; and the
Frame.io API calls a handler makes through ``app.client`` as httpx client spans inside
it. Keys left out fall back to the SDK's ``OTEL_*`` environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Generator
from typing import Any

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from frameiod import (
    ActionEvent,
    ActionHandler,
    PluginContext,
    Reception,
    WebhookEvent,
    WebhookHandler,
    __version__,
    hookimpl,
)
from frameiod_otel.config import OtelConfig
from frameiod_otel.export import make_provider, stop_provider
from frameiod_otel.spans import Spans

__all__ = ["OtelConfig", "OtelPlugin", "plugin"]

Wrapped = Generator[None, Awaitable[Any], Awaitable[Any]]
_SEMCONV = "OTEL_SEMCONV_STABILITY_OPT_IN"


class OtelPlugin:
    """The plugin: its hook wrappers make spans once `frameiod_startup` has run."""

    def __init__(self) -> None:
        self._provider: TracerProvider | None = None
        self._spans: Spans | None = None
        self._httpx: HTTPXClientInstrumentor | None = None

    @hookimpl
    def frameiod_plugin_config_model(self) -> type[OtelConfig]:
        """``[plugins.otel]``, unknown keys refused."""
        return OtelConfig

    @hookimpl
    def frameiod_startup(self, context: PluginContext) -> None:
        """Build the tracer provider and instrument httpx (the Frame.io SDK's transport)."""
        config = context.plugin_config
        assert isinstance(config, OtelConfig)
        provider = make_provider(config, context.log)
        self._provider = provider
        self._spans = Spans(provider.get_tracer("frameiod", __version__))
        # The stable HTTP semantic conventions, as the receive spans use, unless the
        # operator chose otherwise (the instrumentation reads this once, when first used).
        os.environ.setdefault(_SEMCONV, "http")
        # Instrumented at the transport: the daemon's client, built before this hook, too.
        self._httpx = HTTPXClientInstrumentor()
        self._httpx.instrument(tracer_provider=provider)

    @hookimpl
    async def frameiod_shutdown(self, context: PluginContext) -> None:
        """Export what is pending within ``[dispatch] drain_timeout``, then stop."""
        self._spans = None
        if self._httpx is not None:
            self._httpx.uninstrument()
            self._httpx = None
        if self._provider is not None:
            provider, self._provider = self._provider, None
            await stop_provider(provider, context.config.dispatch.drain_timeout, context.log)

    @hookimpl(wrapper=True)
    def frameiod_receive(self, reception: Reception) -> Wrapped:
        """A SERVER span around each webhook and custom-action request."""
        call = yield
        return call if self._spans is None else self._spans.receive(reception, call)

    @hookimpl(wrapper=True)
    def frameiod_call_handler(
        self,
        event: WebhookEvent,
        handler: WebhookHandler,
        attempt: int,
        trace_context: str | None,
    ) -> Wrapped:
        """A CONSUMER span around each handler call, in its event's trace."""
        call = yield
        if self._spans is None:
            return call
        return self._spans.handler_call(event, handler, attempt, trace_context, call)

    @hookimpl(wrapper=True)
    def frameiod_call_action(self, event: ActionEvent, handler: ActionHandler) -> Wrapped:
        """A span around each custom-action call, inside its request's span."""
        call = yield
        return call if self._spans is None else self._spans.action_call(event, handler, call)


plugin = OtelPlugin()
"""What the ``otel`` entry point names."""
