"""How the daemon listens: aiohttp's `web.AppRunner`, served on asyncio servers of our own
through `frameiod.http.aiohttp_hooks.Guard`, and TLS whose certificate a reload can renew.

The sockets are made with ``loop.create_server`` rather than `web.TCPSite`, which has no
way to bound a TLS handshake (asyncio's default is a minute): a handshake must finish
within ``read_timeout``, and counts against the request head's deadline.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiohttp import web

from frameiod.config import Config, ConfigError
from frameiod.http.aiohttp_hooks import Guard, Malformed
from frameiod.metrics import Metrics
from frameiod.ratelimit import Networks

__all__ = ["Listener", "ServedTls", "tls_context"]

# As web.TCPSite's: connections the kernel may queue before the loop accepts them.
_BACKLOG = 128


class Listener:
    """An application being served: its runner, the connections' guard, and its sockets."""

    def __init__(self, runner: web.AppRunner, guard: Guard) -> None:
        self.runner = runner
        self.guard = guard
        self._servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        """The (host, port) of every socket listening, in the order they were bound."""

    @classmethod
    async def start(
        cls,
        app: web.Application,
        *,
        read_timeout: float,
        max_connections: int,
        max_connections_per_address: int,
        shutdown_timeout: float,
        trusted_proxies: Networks | None = None,
        metrics: Metrics | None = None,
        malformed: Malformed | None = None,
        **handler_options: Any,
    ) -> Listener:
        """Start ``app`` (its ``cleanup_ctx`` steps run here) and get ready to listen;
        ``handler_options`` are `web.AppRunner`'s options for each connection."""
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **handler_options
        )
        await runner.setup()
        assert runner.server is not None  # set up just now
        guard = Guard(
            runner.server,
            handler_options,
            read_timeout=read_timeout,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            trusted_proxies=trusted_proxies,
            metrics=metrics,
            malformed=malformed,
        )
        guard.start_sweeping()
        return cls(runner, guard)

    async def bind(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on ``host`` (every address it resolves to) and ``port``. Raises OSError."""
        server = await asyncio.get_running_loop().create_server(
            self.guard,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.guard.read_timeout if ssl_context else None,
            backlog=_BACKLOG,
        )
        self._servers.append(server)
        self.addresses += [
            (str(name[0]), int(name[1])) for name in (s.getsockname() for s in server.sockets)
        ]

    def stop_listening(self) -> None:
        """Close the listening sockets: no new connection from now on."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def cleanup(self) -> None:
        """Close every connection (requests in flight get ``shutdown_timeout``), then run
        the application's cleanup."""
        self.stop_listening()
        self.guard.stop_sweeping()
        await self.runner.cleanup()


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
