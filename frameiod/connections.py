"""How connections are served: TLS, and guards aiohttp lacks (a deadline for receiving a
whole request, and a connection cap).

aiohttp waits forever for request headers that trickle in, and keeps idle connections for
an hour by default, so a few hundred slow clients could hold a daemon hostage. Here each
request must arrive (headers and body) within ``read_timeout`` of its first byte, and at
most ``max_connections`` connections are served at once.

This hooks into aiohttp's request handler (``data_received``, ``_handle_request``): the
smallest seam that sees a request begin before its headers are complete. aiohttp is
pinned below 4 in pyproject.toml, and tests/test_slow_clients.py pins the behaviour.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from frameiod.config import Config, ConfigError
from frameiod.logs import get_logger

__all__ = ["GuardedRunner", "ServedTls", "body_deadline", "tls_context"]

log = get_logger("frameiod.connections")

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\n"
    b'{"error": "read_timeout"}\n'
)


class _GuardedHandler(RequestHandler):
    __slots__ = ("first_byte_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_byte_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        if server is not None and len(server.connections) > server.max_connections:
            server.refused += 1
            log.warning("connection refused: too many open", limit=server.max_connections)
            self.force_close()

    def data_received(self, data: bytes) -> None:
        if self.first_byte_at is None and not self._request_in_progress:
            # The first byte of a new request: its headers and body are due by the deadline
            # (the server's sweep checks the headers; `body_deadline` the body).
            self.first_byte_at = self._loop.time()
        super().data_received(data)

    async def _handle_request(self, request: Any, start_time: Any, handler: Any) -> Any:
        try:
            return await super()._handle_request(request, start_time, handler)
        finally:
            self.first_byte_at = None

    def headers_overdue(self, now: float, read_timeout: float) -> bool:
        """Whether this connection began a request ``read_timeout`` ago and its headers are
        still not complete."""
        return (
            self.first_byte_at is not None
            and not self._request_in_progress
            and now - self.first_byte_at >= read_timeout
        )

    def too_slow(self) -> None:
        """Answer 408 and close: the request's headers missed their deadline."""
        if self.transport is None:
            return
        log.warning(
            "request headers too slow; connection closed",
            remote=self.transport.get_extra_info("peername"),
        )
        if self._manager is not None:
            self._manager.timed_out += 1
        self.transport.write(_TIMEOUT_ANSWER)
        self.force_close()


class _GuardedServer(web.Server):
    read_timeout = 10.0
    max_connections = 1024
    refused = 0
    timed_out = 0
    _sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def start_sweeping(self) -> None:
        """Check every connection's header deadline a few times per ``read_timeout``.

        One timer for the server rather than one per request: arming and cancelling a
        timer for every request cost ~2 % of ingest (bench/). A slow request is cut
        between ``read_timeout`` and ``read_timeout`` plus one period.
        """
        period = min(1.0, self.read_timeout / 4)

        def sweep() -> None:
            now = self._loop.time()
            for handler in list(self.connections):
                if isinstance(handler, _GuardedHandler) and handler.headers_overdue(
                    now, self.read_timeout
                ):
                    handler.too_slow()
            self._sweeper = self._loop.call_later(period, sweep)

        self._sweeper = self._loop.call_later(period, sweep)

    def stop_sweeping(self) -> None:
        """Stop the deadline checks (the server is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class GuardedRunner(web.AppRunner):
    """An `AppRunner` whose connections have a request deadline and a cap."""

    def __init__(
        self, app: web.Application, *, read_timeout: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._read_timeout = read_timeout
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # same layout; only __call__ differs
        server.read_timeout = self._read_timeout  # type: ignore[attr-defined]
        server.max_connections = self._max_connections  # type: ignore[attr-defined]
        server.start_sweeping()  # type: ignore[attr-defined]
        return server

    async def cleanup(self) -> None:
        """Stop the deadline sweep, then close every connection as `AppRunner` does."""
        if isinstance(self.server, _GuardedServer):
            self.server.stop_sweeping()
        await super().cleanup()


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
