"""``[plugins.otel]``: where spans go, and how many traces are kept."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from frameiod.config import SecretRef

__all__ = ["OtelConfig"]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL, e.g. http://127.0.0.1:4318")
    return value.rstrip("/")


class OtelConfig(BaseModel):
    """The plugin's settings; a key left out falls back to the SDK's ``OTEL_*`` variable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    endpoint: Annotated[str, AfterValidator(_http_url)] | None = None
    """The collector's OTLP/HTTP base URL; spans go to ``{endpoint}/v1/traces``. Unset:
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, else the
    SDK's default (``http://localhost:4318``)."""
    service_name: str | None = Field(default=None, min_length=1)
    """``service.name`` of every span. Unset: ``OTEL_SERVICE_NAME``, else ``frameiod``."""
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    """Headers sent with each export (secret references). Empty:
    ``OTEL_EXPORTER_OTLP_HEADERS``."""
    sample_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    """The share of new traces kept (a sender's sampled ``traceparent`` is followed).
    Unset: ``OTEL_TRACES_SAMPLER``, else every trace."""
