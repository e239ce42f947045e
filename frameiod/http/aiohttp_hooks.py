"""The one place frameiod reaches into aiohttp beyond its documented API.

aiohttp waits forever for request headers that trickle in, and answers HTTP its parser
refuses with plain text. No public option changes either, so connections are served by
`_GuardedHandler`, a subclass of aiohttp's `web.RequestHandler` (the protocol `web.Server`
makes for each connection). It touches these undocumented names, and nothing else:

- ``RequestHandler(manager, *, loop, **kwargs)``: the constructor `web.Server.__call__`
  calls; `Guard` calls it the same way with the runner's own ``web.Server`` as manager, so
  that server still tracks, shuts down and closes every connection.
- ``RequestHandler._handle_request`` (overridden, then called): where a request's handling
  begins and ends, so the head's deadline restarts after each answer. A middleware would
  see the same moments at the cost of a wrapper per request.
- ``RequestHandler.handle_error`` (overridden): where the parser's refusals are answered,
  before any route or middleware sees the request.
- ``RequestHandler.force_close``, ``.transport`` and ``BaseRequest.writer.output_size``.

aiohttp's minor version is pinned in pyproject.toml to the releases the suite has run on,
and ``make test-newest`` runs the suite on the newest release, ignoring that pin.
tests/test_slow_clients.py, tests/test_connection_guards.py and tests/test_hostile_http.py
hold the behaviour.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from frameiod.logs import get_logger
from frameiod.metrics import Metrics
from frameiod.ratelimit import Networks, is_within

__all__ = ["Guard", "Malformed", "body_deadline"]

log = get_logger("frameiod.connections")

Malformed = Callable[[web.BaseRequest, HttpProcessingError], web.StreamResponse]
"""Builds the answer to a request aiohttp's parser refused."""

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\n"
    b'{"error": "read_timeout"}\n'
)


class _GuardedHandler(web.RequestHandler):
    __slots__ = ("address", "busy", "counted", "first_byte_at", "guard", "waiting_since")

    def __init__(self, guard: Guard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.first_byte_at: float | None = None
        # Made when the connection is accepted, before any TLS handshake: the head's
        # deadline counts from here, so a slow handshake leaves less time for the head.
        self.waiting_since = guard.loop.time()
        self.busy = False  # a request's handling has begun and not ended
        self.address: str | None = None
        self.counted = False  # in its address's count of open connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.admit(self, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.first_byte_at is None and not self.busy:
            # The first byte of a new request: its body is due by `body_deadline`.
            self.first_byte_at = self.guard.loop.time()
        super().data_received(data)

    async def _handle_request(self, request: Any, start_time: Any, handler: Any) -> Any:
        if self.first_byte_at is None:
            # Its head arrived while the previous request was being answered.
            self.first_byte_at = self.guard.loop.time()
        self.busy = True
        self.guard.serving(self)
        try:
            return await super()._handle_request(request, start_time, handler)
        finally:
            self.busy = False
            self.first_byte_at = None
            self.waiting_since = self.guard.loop.time()
            self.guard.waiting(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer HTTP the parser refused through the guard's ``malformed`` callback;
        leave every other error (a handler's bug) to aiohttp."""
        malformed = self.guard.malformed
        if (
            isinstance(exc, HttpProcessingError)
            and malformed is not None
            and request.writer.output_size == 0
        ):
            return malformed(request, exc)
        return super().handle_error(request, status, exc, message)

    def head_overdue(self, now: float, read_timeout: float) -> bool:
        """Whether this connection has waited ``read_timeout`` for a complete request head
        since it opened or since its previous answer."""
        return not self.busy and now - self.waiting_since >= read_timeout

    def too_slow(self) -> str | None:
        """Close this connection, its head overdue: 408 if a head had begun, silently if
        nothing came. Returns the reason it was closed for (None: it was gone already)."""
        if self.transport is None:
            return None
        if self.first_byte_at is None:
            # Idle is no fault: clients keep connections open for the next request.
            log.debug("idle connection closed", remote=self.address)
            self.force_close()
            return "idle_timeout"
        log.warning("request head too slow; connection closed", remote=self.address)
        self.transport.write(_TIMEOUT_ANSWER)
        self.force_close()
        return "header_timeout"


class Guard:
    """The protocol factory for ``loop.create_server``: each connection is served by the
    runner's `web.Server`, under a deadline for its request head and caps on connections.

    - a request head must be complete within ``read_timeout`` of the connection opening
      (TLS handshake included) or of the previous answer; a head begun and not finished
      gets 408, a connection that sent nothing is closed silently; the body must follow
      within ``read_timeout`` of the request's first byte (`body_deadline`);
    - at most ``max_connections`` connections are served at once (a new one beyond it
      closes the one that has waited longest for a complete request head, if any is
      waiting), and at most
      ``max_connections_per_address`` from one address (trusted proxies excepted);
    - HTTP the parser refuses is answered by ``malformed`` (default: aiohttp's plain text).

    ``handler_options`` are the keyword arguments the runner was given for its
    connections (``keepalive_timeout``, ``access_log``, ``lingering_time``, ...).
    """

    def __init__(
        self,
        server: web.Server,
        handler_options: dict[str, Any],
        *,
        read_timeout: float,
        max_connections: int,
        max_connections_per_address: int,
        trusted_proxies: Networks | None = None,
        metrics: Metrics | None = None,
        malformed: Malformed | None = None,
    ) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self._options = handler_options
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_per_address = max_connections_per_address
        self.trusted: Networks = trusted_proxies or []
        self.metrics = metrics
        self.malformed = malformed
        self.open_by_address: Counter[str] = Counter()
        # Connections whose request head is not complete (nothing sent, or part of a head),
        # in the order they began to wait: since they opened, or since their last answer.
        self._waiting: dict[_GuardedHandler, None] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> web.RequestHandler:
        """A protocol for one new connection."""
        return _GuardedHandler(self, self.server, loop=self.loop, **self._options)

    def admit(self, handler: _GuardedHandler, transport: asyncio.BaseTransport) -> None:
        """Count a new connection by its address, and close it at once if it is one too
        many for its address. One too many for the server makes room instead: of the
        connections without a complete request head, the one that has waited longest is
        closed, and only when every other one is serving a request is the new one refused.

        Otherwise connections that send nothing, or a byte of a head, opened from a few
        addresses (each within its cap) and reopened as ``read_timeout`` closes them,
        would hold every place and shut Frame.io out. Now they only ever lose their place
        to a newcomer, which sends its whole head at once, and is served unless every
        place is serving a request.
        """
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        handler.address = address
        if address is not None and not is_within(address, self.trusted):
            handler.counted = True
            self.open_by_address[address] += 1
        if handler.counted and self.open_by_address[address] > self.max_per_address:
            reason, limit = "per_address", self.max_per_address
        elif len(self.server.connections) > self.max_connections and not self._make_room():
            reason, limit = "max_connections", self.max_connections
        else:
            self._waiting[handler] = None
            return
        self._count(reason)
        log.warning("connection refused", reason=reason, limit=limit, remote=address)
        handler.force_close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a complete request head, if
        one is waiting; True if one was."""
        longest = next(iter(self._waiting), None)
        if longest is None:
            return False
        del self._waiting[longest]
        self._count("idle_evicted")
        log.info(
            "idle connection closed to make room",
            limit=self.max_connections,
            remote=longest.address,
            idle_s=round(self.loop.time() - longest.waiting_since, 3),
        )
        longest.force_close()
        return True

    def serving(self, handler: _GuardedHandler) -> None:
        """``handler``'s request head is complete: it is serving a request."""
        self._waiting.pop(handler, None)

    def waiting(self, handler: _GuardedHandler) -> None:
        """``handler`` answered its request and waits for the next, behind every
        connection that began to wait before it."""
        if handler.transport is not None:
            self._waiting[handler] = None

    def forget(self, handler: _GuardedHandler) -> None:
        """Take a closed connection out of its address's count and the waiting ones."""
        self._waiting.pop(handler, None)
        if handler.counted and handler.address:
            handler.counted = False
            self.open_by_address[handler.address] -= 1
            if self.open_by_address[handler.address] <= 0:
                del self.open_by_address[handler.address]

    def trust(self, trusted_proxies: Networks) -> None:
        """Exempt these proxies (see `frameiod.ratelimit.networks`) from the
        per-address cap from now on (a reload)."""
        self.trusted = trusted_proxies

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_refused.labels(reason=reason).inc()

    def start_sweeping(self) -> None:
        """Check every connection's head deadline a few times per ``read_timeout``.

        One timer for the server rather than one per connection, so that no request arms
        and cancels a timer of its own. A connection is cut between ``read_timeout`` and
        ``read_timeout`` plus one period.
        """
        period = min(1.0, self.read_timeout / 4)

        def sweep() -> None:
            now = self.loop.time()
            for handler in self.server.connections:
                if isinstance(handler, _GuardedHandler) and handler.head_overdue(
                    now, self.read_timeout
                ):
                    reason = handler.too_slow()
                    if reason is not None:
                        self._count(reason)
            self._sweeper = self.loop.call_later(period, sweep)

        self._sweeper = self.loop.call_later(period, sweep)

    def stop_sweeping(self) -> None:
        """Stop the deadline checks (the server is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def body_deadline(request: web.Request, read_timeout: float) -> float | None:
    """Seconds left for this request's body (counted from its first byte), if known."""
    first = getattr(request.protocol, "first_byte_at", None)
    if first is None:
        return None
    return max(0.0, first + read_timeout - asyncio.get_running_loop().time())
