"""Frame.io's v0 request signature: ``v0=hex(HMAC-SHA256(secret, "v0:" + ts + ":" + body))``.

Sans-I/O: these functions see bytes and header values, never a request object, and
every way a request can fail raises one exception type whose ``reason`` the HTTP layer
logs and counts. The same scheme signs webhooks and custom-action requests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "Verified",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Frameio-Signature"
TIMESTAMP_HEADER = "X-Frameio-Request-Timestamp"

# fullmatch with explicit ASCII classes: int() would accept "1_000", " 1", "+1" and
# non-ASCII digits, and "$" would let a trailing newline through.
_TIMESTAMP = re.compile(r"[0-9]{1,10}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class SignatureError(Exception):
    """A request failed verification; ``reason`` is a short fixed word for logs and metrics.

    Reasons: ``missing_timestamp``, ``missing_signature``, ``duplicate_header``,
    ``bad_timestamp``, ``malformed_signature``, ``signature_mismatch``, ``stale``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def is_stale(self) -> bool:
        """True when the signature was valid but the timestamp was outside the tolerance."""
        return self.reason == "stale"


@dataclass(frozen=True, slots=True)
class Verified:
    """What a successful verification established."""

    timestamp: int
    """The request timestamp (Unix seconds), as signed."""
    secret_index: int
    """Index of the secret that matched, in the order the secrets were given."""
    signature: str
    """The signature header value, e.g. for replay detection."""


class _MultiHeaders(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...


Headers = _MultiHeaders | Mapping[str, str]


def _to_key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _digest(key: bytes, body: bytes, timestamp: bytes) -> str:
    return hmac.new(key, b"v0:" + timestamp + b":" + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | str) -> str:
    """Return the ``X-Frameio-Signature`` value Frame.io would send for this body and timestamp."""
    return "v0=" + _digest(_to_key(secret), body, str(timestamp).encode("ascii"))


def _values(headers: Headers, name: str) -> list[str]:
    if hasattr(headers, "getall"):
        return list(headers.getall(name, []))
    wanted = name.lower()
    items: Iterable[tuple[str, str]] = headers.items()  # type: ignore[union-attr]
    return [value for key, value in items if key.lower() == wanted]


def _single(headers: Headers, name: str, missing_reason: str) -> str:
    values = _values(headers, name)
    if not values:
        raise SignatureError(missing_reason, f"no {name} header")
    if len(values) > 1:
        # Two values leave it ambiguous which one was signed; refuse rather than pick.
        raise SignatureError("duplicate_header", f"{name} sent {len(values)} times")
    return values[0]


def verify(
    headers: Headers,
    body: bytes,
    secrets: Sequence[str | bytes],
    tolerance: float,
    clock: Callable[[], float] = time.time,
) -> Verified:
    """Verify a Frame.io request and return what was established, or raise `SignatureError`.

    ``headers`` is a multi-valued mapping (aiohttp's ``CIMultiDictProxy``) or a plain
    mapping. Any of ``secrets`` may match (rotation). The timestamp must lie within
    ``tolerance`` seconds of ``clock()`` in either direction. The signature is checked
    before the clock, so ``stale`` is reported only for requests that were really signed.
    """
    timestamp = _single(headers, TIMESTAMP_HEADER, "missing_timestamp")
    signature = _single(headers, SIGNATURE_HEADER, "missing_signature")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("bad_timestamp", "timestamp is not 1 to 10 ASCII digits")
    if not _SIGNATURE.fullmatch(signature):
        raise SignatureError("malformed_signature", "signature is not v0= and 64 lowercase hex")

    given = signature[3:].encode("ascii")
    ts_bytes = timestamp.encode("ascii")
    matched = -1
    for index, secret in enumerate(secrets):
        # Bytes, not str: compare_digest raises TypeError on non-ASCII str.
        if hmac.compare_digest(_digest(_to_key(secret), body, ts_bytes).encode("ascii"), given):
            matched = index
            break
    if matched < 0:
        raise SignatureError("signature_mismatch", "no configured secret produces this signature")

    ts = int(timestamp)
    skew = clock() - ts
    if abs(skew) > tolerance:
        direction = "old" if skew > 0 else "in the future"
        raise SignatureError("stale", f"timestamp is {abs(skew):.0f}s {direction}")
    return Verified(timestamp=ts, secret_index=matched, signature=signature)
