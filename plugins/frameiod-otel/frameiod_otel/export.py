"""The tracer provider: spans batched and exported by the SDK's own thread, off the event
loop, and a collector that cannot be reached reported once, then with a count."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from frameiod_otel.config import OtelConfig
from frameiod_otel.otlp import OtlpHttpExporter

__all__ = ["ReportingExporter", "make_provider", "stop_provider"]

# While exports keep failing, one line this often says how many spans were lost.
_REPORT_EVERY_SECONDS = 60.0


class ReportingExporter(SpanExporter):
    """Exports through ``inner``; logs the first failure, then a count now and then, and
    the recovery, never a line per span."""

    def __init__(
        self,
        inner: SpanExporter,
        log: Any,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._log = log
        self._endpoint = endpoint
        self._clock = clock
        self._failing_since: float | None = None
        self._reported_at = 0.0
        self.lost = 0
        """Spans not exported since exports began to fail."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export one batch (on the SDK's thread); count and report a failure."""
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not end the SDK's thread
            self._log.warning("span exporter raised", error=f"{type(exc).__name__}: {exc}")
            result = SpanExportResult.FAILURE
        now = self._clock()
        if result is SpanExportResult.SUCCESS:
            if self._failing_since is not None:
                self._log.info("spans are exported again", endpoint=self._endpoint, lost=self.lost)
                self._failing_since, self.lost = None, 0
            return result
        self.lost += len(spans)
        if self._failing_since is None:
            self._failing_since = self._reported_at = now
            # Answers and handlers are not delayed: spans are dropped until it answers.
            self._log.warning("spans cannot be exported", endpoint=self._endpoint, lost=self.lost)
        elif now - self._reported_at >= _REPORT_EVERY_SECONDS:
            self._reported_at = now
            self._log.warning(
                "spans still cannot be exported",
                endpoint=self._endpoint,
                lost=self.lost,
                failing_s=round(now - self._failing_since),
            )
        return result

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here; the inner exporter's flush."""
        return self._inner.force_flush(timeout_millis)


def _endpoint(config: OtelConfig) -> str:
    if config.endpoint is not None:
        return f"{config.endpoint}/v1/traces"
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    return f"{base.rstrip('/')}/v1/traces"


def make_provider(config: OtelConfig, log: Any) -> TracerProvider:
    """A provider exporting to the configured collector, ``OTEL_*`` variables filling in
    what the config leaves out."""
    name = config.service_name or os.environ.get("OTEL_SERVICE_NAME") or "frameiod"
    sampler = (
        ParentBased(TraceIdRatioBased(config.sample_ratio))
        if config.sample_ratio is not None
        else None  # the SDK reads OTEL_TRACES_SAMPLER
    )
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), sampler=sampler)
    endpoint = _endpoint(config)
    headers = {key: secret.reveal() for key, secret in config.headers.items()}
    exporter = OtlpHttpExporter(endpoint, headers or None)
    provider.add_span_processor(BatchSpanProcessor(ReportingExporter(exporter, log, endpoint)))
    return provider


async def stop_provider(provider: TracerProvider, within: float, log: Any) -> None:
    """Export what is pending and stop, within ``within`` seconds; past it, give up (the
    SDK's thread is a daemon: it cannot hold the process)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def stop() -> None:
        try:
            provider.force_flush(int(within * 1000))
            provider.shutdown()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=stop, name="frameiod-otel-stop", daemon=True).start()
    try:
        async with asyncio.timeout(within):
            await done
    except TimeoutError:
        log.warning("spans still pending at shutdown were dropped", within_s=within)
