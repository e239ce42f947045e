"""OTLP/HTTP export of span batches: each batch encoded into one protobuf message field by
field, and posted with the standard library from the SDK's export thread.

The OTLP exporter package builds each span, attribute and value as a message of its own and
merges it into its parent, which re-encodes it each time; at one span per webhook that was
most of what tracing cost. The ``OTEL_EXPORTER_OTLP_*`` variables it reads are read here the
same way: endpoint, headers, timeout, compression, certificate and client certificate.
"""

from __future__ import annotations

import gzip
import os
import ssl
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext
from opentelemetry.util.re import parse_env_headers

__all__ = ["OtlpHttpExporter", "encode"]

_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def _value(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, Sequence):
        values = target.array_value.values
        for item in value:
            _value(values.add(), item)
    elif isinstance(value, Mapping):
        values = target.kvlist_value.values
        _attributes(values, value)


def _attributes(target: Any, attributes: Mapping[str, Any] | None) -> None:
    if attributes:
        for key, value in attributes.items():
            pair = target.add()
            pair.key = key
            if value is not None:
                _value(pair.value, value)


def _flags(context: SpanContext | None) -> int:
    if context is not None and context.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """``spans`` as one OTLP ``ExportTraceServiceRequest``, grouped by resource and scope."""
    request = ExportTraceServiceRequest()
    resources: dict[int, tuple[Any, dict[int, Any]]] = {}
    for span in spans:
        resource = span.resource
        found = resources.get(id(resource))
        if found is None:
            out = request.resource_spans.add()
            _attributes(out.resource.attributes, resource.attributes)
            if resource.schema_url:
                out.schema_url = resource.schema_url
            found = resources[id(resource)] = (out, {})
        out, scopes = found
        scope = span.instrumentation_scope
        target = scopes.get(id(scope))
        if target is None:
            scope_spans = out.scope_spans.add()
            if scope is not None:
                scope_spans.scope.name = scope.name
                if scope.version:
                    scope_spans.scope.version = scope.version
                _attributes(scope_spans.scope.attributes, scope.attributes)
                if scope.schema_url:
                    scope_spans.schema_url = scope.schema_url
            else:
                scope_spans.scope.SetInParent()
            target = scopes[id(scope)] = scope_spans.spans
        _span(target.add(), span)
    return request.SerializePartialToString()


def _span(out: Any, span: ReadableSpan) -> None:
    context = span.get_span_context()
    out.trace_id = context.trace_id.to_bytes(16, "big")
    out.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state:
        out.trace_state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
    parent = span.parent
    if parent is not None:
        out.parent_span_id = parent.span_id.to_bytes(8, "big")
    out.name = span.name
    out.kind = span.kind.value + 1
    out.start_time_unix_nano = span.start_time
    out.end_time_unix_nano = span.end_time
    _attributes(out.attributes, span.attributes)
    if span.dropped_attributes:
        out.dropped_attributes_count = span.dropped_attributes
    for event in span.events:
        encoded = out.events.add()
        encoded.name = event.name
        encoded.time_unix_nano = event.timestamp
        _attributes(encoded.attributes, event.attributes)
        if event.dropped_attributes:
            encoded.dropped_attributes_count = event.dropped_attributes
    if span.dropped_events:
        out.dropped_events_count = span.dropped_events
    for link in span.links:
        encoded = out.links.add()
        encoded.trace_id = link.context.trace_id.to_bytes(16, "big")
        encoded.span_id = link.context.span_id.to_bytes(8, "big")
        _attributes(encoded.attributes, link.attributes)
        if link.dropped_attributes:
            encoded.dropped_attributes_count = link.dropped_attributes
        encoded.flags = _flags(link.context)
    if span.dropped_links:
        out.dropped_links_count = span.dropped_links
    status = span.status
    out.status.code = status.status_code.value
    if status.description:
        out.status.message = status.description
    out.flags = _flags(parent)


def _env(name: str, default: str = "") -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}", default
    )


class OtlpHttpExporter(SpanExporter):
    """Posts each batch to ``endpoint`` (``…/v1/traces``) as ``application/x-protobuf``; a
    batch that fails is dropped (the caller counts it), never retried on the SDK's thread."""

    def __init__(self, endpoint: str, headers: Mapping[str, str] | None = None) -> None:
        self._endpoint = endpoint
        self._headers = {
            **(dict(headers) if headers else parse_env_headers(_env("HEADERS"), liberal=True)),
            "Content-Type": "application/x-protobuf",
        }
        self._timeout = float(_env("TIMEOUT", "10"))
        self._compression = _env("COMPRESSION", "none").strip().lower()
        if self._compression in ("gzip", "deflate"):
            self._headers["Content-Encoding"] = self._compression
        self._context: ssl.SSLContext | None = None
        if endpoint.startswith("https:"):
            self._context = ssl.create_default_context(cafile=_env("CERTIFICATE") or None)
            if certificate := _env("CLIENT_CERTIFICATE"):
                self._context.load_cert_chain(certificate, _env("CLIENT_KEY") or None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode and post one batch (on the SDK's thread)."""
        body = encode(spans)
        if self._compression == "gzip":
            body = gzip.compress(body)
        elif self._compression == "deflate":
            body = zlib.compress(body)
        request = urllib.request.Request(  # noqa: S310 - the configured http(s) URL
            self._endpoint, data=body, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self._timeout, context=self._context
            ) as response:
                response.read()
        except (OSError, urllib.error.URLError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to close: each batch has its own connection."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here."""
        return True
