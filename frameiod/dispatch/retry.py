"""When a failed delivery is tried again: the backoff policy, and what a 429 asked for."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "api_retry_delay"]


@dataclass(frozen=True)
class RetryPolicy:
    """``[dispatch]`` settings a handler may override (``timeout=``, ``max_attempts=``)."""

    handler_timeout: float = 30.0
    max_attempts: int = 8
    backoff_initial: float = 5.0
    backoff_max: float = 3600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure: full jitter over an
        exponentially growing cap, so retries of many deliveries spread out."""
        cap = min(self.backoff_max, self.backoff_initial * 2 ** (attempts - 1))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography


def api_retry_delay(error: BaseException | None) -> float | None:
    """Seconds a Frame.io 429 answer asked to wait (``Retry-After`` or ``retry-after-ms``),
    or None if ``error`` is no such answer.

    Reads the frameio SDK's ``TooManyRequestsError`` (an ``ApiError`` with ``status_code``
    and ``headers``) without importing the SDK.
    """
    if getattr(error, "status_code", None) != 429:
        return None
    headers: Any = getattr(error, "headers", None) or {}
    lowered = {str(key).lower(): str(value) for key, value in dict(headers).items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        if "retry-after" in lowered:
            return max(0.0, float(lowered["retry-after"]))
    except ValueError:
        return None  # an HTTP date, which Frame.io does not send: the usual backoff applies
    return None
