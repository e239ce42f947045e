"""The daemon's lifecycle: start plugins, serve, dispatch, and stop in the right order.

This is where the parts meet (server → spool → dispatch → handlers); the server and the
dispatcher never import each other.
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from frameiod import __version__
from frameiod.config import Config
from frameiod.dispatch import Dispatcher
from frameiod.metrics import Metrics
from frameiod.plugins import PluginHost
from frameiod.server import SHUTDOWN_TIMEOUT, STATE, create_app
from frameiod.spool import MemorySpool

__all__ = ["Daemon", "serve"]

log = structlog.get_logger("frameiod.daemon")


class Daemon:
    """One running frameiod: `start` it, then `stop` it (also usable from tests in-process)."""

    def __init__(self, config: Config, plugins: PluginHost | None = None) -> None:
        self.config = config
        self.plugins = plugins or PluginHost()
        self.spool = MemorySpool()
        self.metrics = Metrics(config.sources, __version__)
        self.app: web.Application | None = None
        self.dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None
        self._dispatch_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port the daemon listens on (useful when the config says 0)."""
        assert self.app is not None, "not started"
        return self.app[STATE].addresses[0][1]

    async def start(self) -> None:
        """Start plugins, bind the port, start dispatching; raises OSError if it cannot listen."""
        await self.plugins.startup(self.config)
        routes = self.plugins.routes()
        for handler in routes.handlers:
            if handler.source not in self.config.sources and not handler.secrets:
                log.warning(
                    "handler listens on a source that is not configured; it will get nothing",
                    plugin=handler.plugin,
                    handler=handler.name,
                    source=handler.source,
                )
        self.metrics.register_plugins(self.plugins.plugins.values())
        self.metrics.register_handlers(routes.handlers)
        self.app = create_app(self.config, spool=self.spool, metrics=self.metrics, routes=routes)
        # access_log=None: the one line per delivery replaces aiohttp's access log.
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.server.host, self.config.server.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            await self.plugins.shutdown()
            raise
        self.dispatcher = Dispatcher(
            self.spool, routes, metrics=self.metrics, notify=self.plugins.notify
        )
        self._dispatch_task = asyncio.create_task(self.dispatcher.run(), name="frameiod-dispatch")
        state = self.app[STATE]
        state.addresses = [(str(a[0]), int(a[1])) for a in self._runner.addresses]
        state.ready = True
        host, port = state.addresses[0]
        log.info(
            "listening",
            host=host,
            port=port,
            version=__version__,
            sources=sorted(state.sources),
            plugins=self.plugins.loaded,
            config=str(self.config.path),
        )

    async def stop(self) -> None:
        """Stop accepting, finish requests in flight, hand every accepted event to its
        handlers, then shut the plugins down."""
        assert self.app is not None, "not started"
        assert self._runner is not None, "not started"
        state = self.app[STATE]
        state.stopping = True
        log.info("stopping", in_flight=state.in_flight, in_queue=len(self.spool))
        for site in self._runner.sites:
            await site.stop()
        # aiohttp stops reading from every connection once runner.cleanup() begins, so a
        # request whose body is still arriving would stall there: let those finish first.
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await state.drain()
        except TimeoutError:
            log.warning("requests still in flight at shutdown", in_flight=state.in_flight)
        await self._runner.cleanup()
        self.spool.close()
        if self._dispatch_task is not None:
            await self._dispatch_task
        await self.plugins.shutdown()
        dispatched = self.dispatcher.dispatched if self.dispatcher else 0
        log.info("stopped", dispatched=dispatched)


async def serve(config: Config, plugins: PluginHost | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit status."""
    # Signals first: a SIGTERM that arrives while starting must still mean a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(config, plugins)
    try:
        await daemon.start()
    except OSError as exc:
        log.error(
            "cannot listen",
            host=config.server.host,
            port=config.server.port,
            error=exc.strerror or str(exc),
        )
        return 1
    await stop.wait()
    await daemon.stop()
    return 0
