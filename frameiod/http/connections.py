"""How connections are served: TLS, and guards aiohttp lacks (a deadline for the request
head counted from the moment a connection opens, caps on connections, and malformed HTTP
answered like every other refusal).

aiohttp waits forever for request headers that trickle in, keeps idle connections for an
hour by default, gives a TLS handshake a minute, and answers HTTP its parser refuses with
plain text and an ERROR traceback. So here:

- a request head must be complete within ``read_timeout`` of the connection opening
  (TLS handshake included) or of the previous answer; a head begun and not finished gets
  408, a connection that sent nothing is closed silently; the body must follow within
  ``read_timeout`` of the request's first byte (`body_deadline`);
- at most ``max_connections`` connections are served at once, and at most
  ``max_connections_per_address`` from one address (trusted proxies excepted): one
  address cannot take every slot;
- HTTP the parser refuses is answered by the daemon's own ``malformed`` callback.

This hooks into aiohttp's request handler (``data_received``, ``_handle_request``,
``handle_error``), the smallest seam that sees a request begin before its head is
complete, and into `web.TCPSite` for the handshake timeout it does not pass to asyncio.
aiohttp is pinned below 4 in pyproject.toml; tests/test_slow_clients.py and
tests/test_connection_guards.py pin the behaviour.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from frameiod.config import Config, ConfigError
from frameiod.logs import get_logger
from frameiod.metrics import Metrics
from frameiod.ratelimit import Networks, is_within

__all__ = [
    "GuardedRunner",
    "GuardedSite",
    "Malformed",
    "ServedTls",
    "body_deadline",
    "tls_context",
]

log = get_logger("frameiod.connections")

Malformed = Callable[[web.BaseRequest, HttpProcessingError], web.StreamResponse]
"""Builds the answer to a request aiohttp's parser refused."""

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\n"
    b'{"error": "read_timeout"}\n'
)


class _GuardedHandler(RequestHandler):
    __slots__ = ("address", "counted", "first_byte_at", "waiting_since")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_byte_at: float | None = None
        # Made when the connection is accepted, before any TLS handshake: the head's
        # deadline counts from here, so a slow handshake leaves less time for the head.
        self.waiting_since = self._loop.time()
        self.address: str | None = None
        self.counted = False  # in its address's count of open connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        if isinstance(server, _GuardedServer):
            server.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.first_byte_at is None and not self._request_in_progress:
            # The first byte of a new request: its body is due by `body_deadline`.
            self.first_byte_at = self._loop.time()
        super().data_received(data)

    async def _handle_request(self, request: Any, start_time: Any, handler: Any) -> Any:
        if self.first_byte_at is None:
            # Its head arrived while the previous request was being answered.
            self.first_byte_at = self._loop.time()
        try:
            return await super()._handle_request(request, start_time, handler)
        finally:
            self.first_byte_at = None
            self.waiting_since = self._loop.time()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer HTTP the parser refused through the daemon's ``malformed`` callback;
        leave every other error (a handler's bug) to aiohttp."""
        server = self._manager
        if (
            isinstance(exc, HttpProcessingError)
            and isinstance(server, _GuardedServer)
            and server.malformed is not None
            and request.writer.output_size == 0
        ):
            return server.malformed(request, exc)
        return super().handle_error(request, status, exc, message)

    def head_overdue(self, now: float, read_timeout: float) -> bool:
        """Whether this connection has waited ``read_timeout`` for a complete request head
        since it opened or since its previous answer."""
        # Not aiohttp's `_keepalive`: before 3.14.4 it is False until a first request, so a
        # connection that never sent one would never be due. One closing after its answer
        # is gone long before ``read_timeout``.
        return not self._request_in_progress and now - self.waiting_since >= read_timeout

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


class _GuardedServer(web.Server):
    read_timeout = 10.0
    max_connections = 1024
    max_per_address = 64
    trusted: Networks
    open_by_address: Counter[str]
    metrics: Metrics | None = None
    malformed: Malformed | None = None
    _sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: _GuardedHandler) -> None:
        """Count a new connection by its address, and close it at once if it is one too
        many, for the server or for its address."""
        assert handler.transport is not None
        peer = handler.transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        handler.address = address
        if address is not None and not is_within(address, self.trusted):
            handler.counted = True
            self.open_by_address[address] += 1
        if len(self.connections) > self.max_connections:
            reason, limit = "max_connections", self.max_connections
        elif handler.counted and self.open_by_address[address] > self.max_per_address:
            reason, limit = "per_address", self.max_per_address
        else:
            return
        self._count(reason)
        log.warning("connection refused", reason=reason, limit=limit, remote=address)
        handler.force_close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Forget the connection, and its place in its address's count."""
        super().connection_lost(handler, exc)
        if isinstance(handler, _GuardedHandler) and handler.counted and handler.address:
            handler.counted = False
            self.open_by_address[handler.address] -= 1
            if self.open_by_address[handler.address] <= 0:
                del self.open_by_address[handler.address]

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_refused.labels(reason=reason).inc()

    def start_sweeping(self) -> None:
        """Check every connection's head deadline a few times per ``read_timeout``.

        One timer for the server rather than one per connection: arming and cancelling a
        timer for every request is measurable in ingest (bench/). A connection is cut
        between ``read_timeout`` and ``read_timeout`` plus one period.
        """
        period = min(1.0, self.read_timeout / 4)

        def sweep() -> None:
            now = self._loop.time()
            for handler in list(self.connections):
                if isinstance(handler, _GuardedHandler) and handler.head_overdue(
                    now, self.read_timeout
                ):
                    reason = handler.too_slow()
                    if reason is not None:
                        self._count(reason)
            self._sweeper = self._loop.call_later(period, sweep)

        self._sweeper = self._loop.call_later(period, sweep)

    def stop_sweeping(self) -> None:
        """Stop the deadline checks (the server is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class GuardedRunner(web.AppRunner):
    """An `AppRunner` whose connections have a request deadline and caps, and whose
    malformed requests are answered by ``malformed`` (default: aiohttp's plain text)."""

    def __init__(
        self,
        app: web.Application,
        *,
        read_timeout: float,
        max_connections: int,
        max_connections_per_address: int,
        trusted_proxies: Networks | None = None,
        metrics: Metrics | None = None,
        malformed: Malformed | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.read_timeout = read_timeout
        self._max_connections = max_connections
        self._max_per_address = max_connections_per_address
        self._trusted = trusted_proxies or []
        self._metrics = metrics
        self._malformed = malformed

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # same layout; only __call__ differs
        assert isinstance(server, _GuardedServer)
        server.read_timeout = self.read_timeout
        server.max_connections = self._max_connections
        server.max_per_address = self._max_per_address
        server.trusted = self._trusted
        server.open_by_address = Counter()
        server.metrics = self._metrics
        server.malformed = self._malformed
        server.start_sweeping()
        return server

    def trust(self, trusted_proxies: Networks) -> None:
        """Exempt these proxies (see `frameiod.ratelimit.networks`) from the per-address cap
        from now on (a reload)."""
        self._trusted = trusted_proxies
        if isinstance(self.server, _GuardedServer):
            self.server.trusted = self._trusted

    async def cleanup(self) -> None:
        """Stop the deadline sweep, then close every connection as `AppRunner` does."""
        if isinstance(self.server, _GuardedServer):
            self.server.stop_sweeping()
        await super().cleanup()


class GuardedSite(web.TCPSite):
    """A `web.TCPSite` whose TLS handshakes must finish within the runner's
    ``read_timeout`` (asyncio's default is a minute, and `web.TCPSite` cannot change it)."""

    async def start(self) -> None:
        """Listen, as `web.TCPSite.start` does, with the handshake timeout."""
        await web.BaseSite.start(self)
        runner = self._runner
        assert isinstance(runner, GuardedRunner)
        assert runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            runner.server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=runner.read_timeout if self._ssl_context else None,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def body_deadline(request: web.Request, read_timeout: float) -> float | None:
    """Seconds left for this request's body (counted from its first byte), if known."""
    protocol = request.protocol
    first = getattr(protocol, "first_byte_at", None)
    if first is None:
        return None
    return max(0.0, first + read_timeout - asyncio.get_running_loop().time())


def _load_chain(context: ssl.SSLContext, config: Config) -> None:
    """Load the certificate chain and key into a context not yet serving anyone.

    Raises `ConfigError` naming the key and the file when they cannot be loaded.
    """
    files = config.tls_files()
    assert files is not None, "TLS is not configured"
    certificate, key = files
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [
                f"{config.path}: server.tls_certificate / server.tls_key: cannot load "
                f"{certificate} and {key}: {exc.strerror or exc}"
            ]
        ) from None


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A new server-side TLS context (TLS 1.2 and newer) holding the certificate ``[server]``
    names, or None when it names none. Raises `ConfigError` if the files cannot be loaded."""
    if config.tls_files() is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, config)
    return context


class ServedTls:
    """The TLS context a site listens with, whose certificate is replaced only whole.

    Loading a new chain into a context that is serving changes it even when the load then
    fails (a new certificate with the old key leaves it with no usable key), so a renewal
    is loaded into a context of its own, and each handshake is handed the current one from
    ``sni_callback`` (OpenSSL calls it on every ClientHello, with or without SNI).
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.listening = context
        self._current = context
        context.sni_callback = self._pick

    def _pick(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        connection.context = self._current

    def use(self, context: ssl.SSLContext) -> None:
        """Serve ``context``'s certificate (a context from `tls_context`) from the next
        handshake on; connections already open keep theirs."""
        self._current = context
