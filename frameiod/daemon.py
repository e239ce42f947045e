"""The daemon's lifecycle: start plugins, serve, dispatch, and stop in the right order.

This is where the parts meet (server → spool → dispatch → handlers); the server and the
dispatcher never import each other.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import ssl

from aiohttp import web

from frameiod import __version__, idle, systemd
from frameiod.client import FrameioClient
from frameiod.config import Config, ConfigError, dev_secret_problem, load_config
from frameiod.dispatch.dispatcher import Dispatcher, RetryPolicy
from frameiod.events import WebhookEvent
from frameiod.http.connections import GuardedRunner, GuardedSite, ServedTls, tls_context
from frameiod.http.server import SHUTDOWN_TIMEOUT, STATE, Live, answer_malformed, create_app
from frameiod.logs import configure_logging, get_logger
from frameiod.metrics import Metrics
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.plugins.routing import Routes
from frameiod.store.base import SpoolBackend, SpoolError, SpoolUnavailable, replay_window
from frameiod.store.open import Backend, open_backend

__all__ = ["Daemon", "serve"]

log = get_logger("frameiod.daemon")

# How often done deliveries are purged and the spool gauges refreshed.
_MAINTENANCE_SECONDS = 5.0


class Daemon:
    """One running frameiod: `start` it, then `stop` it (also usable from tests in-process)."""

    def __init__(self, config: Config, plugins: PluginHost | None = None) -> None:
        self.config = config
        self.plugins = plugins or PluginHost(make_plugin_manager(load_entrypoints=False))
        self.metrics = Metrics(config.sources, __version__)
        self.backend: Backend | None = None
        self.spool: SpoolBackend | None = None
        self.client: FrameioClient | None = None
        self.app: web.Application | None = None
        self.dispatcher: Dispatcher | None = None
        self._runner: GuardedRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tls: ServedTls | None = None
        self._observers: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()

    @property
    def port(self) -> int:
        """The port the daemon listens on (useful when the config says 0)."""
        assert self.app is not None, "not started"
        return self.app[STATE].addresses[0][1]

    async def start(self) -> None:
        """Open the spool, start plugins, bind the port, start dispatching.

        Raises `SpoolError` if the spool cannot be used, `ConfigError` for a problem only
        visible now (TLS files, two plugins answering one action), OSError if it cannot
        listen. Whatever was started is stopped again before raising.
        """
        self.backend = backend = await open_backend(self.config, idle.call_when_idle)
        self.spool = spool = backend.spool
        if spool.recovered:
            log.warning(
                "deliveries interrupted by a crash will run again",
                count=spool.recovered,
                spool=spool.describe(),
            )
        try:
            context = tls_context(self.config)
            self._tls = ServedTls(context) if context is not None else None
            routes = await self._start_plugins()
            self.app = create_app(
                self.config,
                spool=spool,
                metrics=self.metrics,
                routes=routes,
                # No observer, no task per event: a task per request shows in ingest (bench/).
                observe=(
                    self._observe if self.plugins.observes("frameiod_event_accepted") else None
                ),
                limiter=backend.limiter,
            )
            await self._listen(self.app)
        except (ConfigError, OSError):
            await self._close_resources()
            raise
        self._start_dispatching(spool, routes)
        state = self.app[STATE]
        assert self._runner is not None
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
            spool=spool.describe(),
            handover=backend.handover,
        )

    async def _close_resources(self) -> None:
        await self.plugins.shutdown()
        if self.client is not None:
            await self.client.close()
        if self.spool is not None:
            await self.spool.close()

    def _observe(self, event: WebhookEvent, source: str) -> None:
        # Observers run beside the request, never inside it: the 202 does not wait.
        task = asyncio.create_task(
            self.plugins.notify("frameiod_event_accepted", event=event, source=source)
        )
        self._observers.add(task)
        task.add_done_callback(self._observers.discard)

    async def _maintain(self) -> None:
        """Purge old done deliveries and refresh the spool gauges, every few seconds."""
        assert self.spool is not None
        while True:
            try:
                purged = await self.spool.purge_done(
                    self.config.spool.keep_done, self._replay_window()
                )
                if purged:
                    log.info("purged done events", count=purged)
                self.metrics.spool(*await self.spool.gauges())
            except SpoolUnavailable as exc:
                log.warning("spool maintenance failed", reason=exc.reason, detail=exc.detail)
            await asyncio.sleep(_MAINTENANCE_SECONDS)

    def _replay_window(self) -> float:
        """How long seen requests are remembered: from the tolerances in force now (a
        reload changes them), whatever ``keep_done`` says."""
        assert self.app is not None, "not started"
        return replay_window(key.tolerance for key in self.app[STATE].live.sources.values())

    async def _start_plugins(self) -> Routes:
        if self.config.frameio.configured:
            self.client = FrameioClient(self.config.frameio)
        await self.plugins.startup(self.config, self.client.api if self.client else None)
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
        self.metrics.register_actions(routes.actions.values())
        return routes

    async def _listen(self, app: web.Application) -> None:
        server = self.config.server
        # access_log=None: the one line per delivery replaces aiohttp's access log.
        self._runner = GuardedRunner(
            app,
            read_timeout=server.read_timeout,
            max_connections=server.max_connections,
            max_connections_per_address=server.max_connections_per_address,
            trusted_proxies=app[STATE].live.proxies,
            metrics=self.metrics,
            malformed=functools.partial(answer_malformed, app),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=server.keepalive_timeout,
            auto_decompress=False,
            # After refusing a body midway (408, 413), how long to keep reading what is still
            # coming so the client sees the answer: aiohttp's 10 s would hold slow clients.
            lingering_time=1.0,
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner,
            server.host,
            server.port,
            ssl_context=self._tls.listening if self._tls is not None else None,
        )
        try:
            await site.start()
            # Judged on the sockets themselves: a name like "localhost" binds whatever it
            # resolves to.
            self._check_dev_secret(self.config)
        except (ConfigError, OSError):
            await self._runner.cleanup()
            raise

    def _check_dev_secret(self, config: Config) -> None:
        """Raise `ConfigError` if ``config`` would accept the development secret on a
        socket this daemon has bound beyond loopback."""
        assert self._runner is not None, "not listening"
        problem = dev_secret_problem(config, [str(a[0]) for a in self._runner.addresses])
        if problem:
            raise ConfigError([f"{config.path}: {problem}"])

    def _start_dispatching(self, spool: SpoolBackend, routes: Routes) -> None:
        dispatch = self.config.dispatch
        self.dispatcher = Dispatcher(
            spool,
            routes,
            policy=RetryPolicy(
                handler_timeout=dispatch.handler_timeout,
                max_attempts=dispatch.max_attempts,
                backoff_initial=dispatch.backoff_initial,
                backoff_max=dispatch.backoff_max,
            ),
            workers=dispatch.workers,
            metrics=self.metrics,
            notify=(
                self.plugins.notify if self.plugins.observes("frameiod_delivery_finished") else None
            ),
        )
        self.dispatcher.set_dispatch_rates(_dispatch_rates(self.config))
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="frameiod-dispatch"),
            asyncio.create_task(self._maintain(), name="frameiod-maintenance"),
        ]

    def summary(self) -> str:
        """A one-line status for systemd (``systemctl status``)."""
        assert self.app is not None, "not started"
        state = self.app[STATE]
        host, port = state.addresses[0]
        return (
            f"listening on {host}:{port}; {len(state.sources)} source(s), "
            f"{len(self.plugins.loaded)} plugin(s)"
        )

    async def reload(self) -> bool:
        """Re-read the config file and apply it (SIGHUP); False if it was refused.

        New secrets, tolerances, rate limits, log settings and the set of sources take
        effect together; anything wrong keeps the old configuration fully in force.
        Settings that need a restart are named in a warning. Reloads run one at a time, in
        the order they were asked for.
        """
        async with self._reloading:
            return await self._reload()

    def _read_config(self) -> tuple[Config, ssl.SSLContext | None]:
        """Load the config file, check it against the sockets bound, validate the plugins'
        tables, and load renewed certificates: every file a reload reads (secrets too) is
        read here, off the event loop. Raises `ConfigError`."""
        new = load_config(self.config.path)
        # load_config judged the file's server.host; the sockets keep the old one.
        self._check_dev_secret(new)
        self.plugins.configure(new, apply=False)
        # Certificates renewed on disk: loaded apart, served only if all of this passes.
        # (HTTPS switched off waits for a restart: the old certificate stays.)
        renewed = tls_context(new) if self._tls is not None else None
        return new, renewed

    async def _reload(self) -> bool:
        assert self.app is not None, "not started"
        state = self.app[STATE]
        try:
            # In a thread: a slow disk or an odd file must not stop the loop serving requests.
            new, renewed = await asyncio.to_thread(self._read_config)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(outcome="error").inc()
            for problem in exc.problems:
                log.error("config reload refused; the old config stays in force", problem=problem)
            return False
        assert self.backend is not None
        live = Live.build(new, state.routes, limiter=self.backend.limiter)
        self.metrics.add_sources(live.sources)
        changed = _needs_restart(self.config, new)
        old_log = self.config.log
        state.live = live  # one assignment: every request sees the old config or the new
        if self._tls is not None and renewed is not None:
            self._tls.use(renewed)
        if self._runner is not None:
            self._runner.trust(live.proxies)
        self.config = new
        if self.dispatcher is not None:
            self.dispatcher.set_dispatch_rates(_dispatch_rates(new))
        self.metrics.config_reloads.labels(outcome="ok").inc()
        if changed:
            log.warning("these settings take effect only after a restart", keys=changed)
        # Said before the log settings change, so it is seen even when they go quieter.
        log.info("config reloaded", sources=sorted(live.sources), config=str(new.path))
        if new.log != old_log:
            configure_logging(new.log.level, new.log.format)
        return True

    async def stop(self) -> None:
        """Stop accepting, finish requests in flight, let running handler calls finish (up
        to ``[dispatch] drain_timeout``), leave everything else pending in the spool, then
        shut the plugins down and close the spool."""
        assert self.app is not None, "not started"
        assert self._runner is not None, "not started"
        assert self.spool is not None, "not started"
        assert self.dispatcher is not None, "not started"
        state = self.app[STATE]
        state.stopping = True
        log.info("stopping", in_flight=state.in_flight, running=self.dispatcher.running)
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
        cut = await self.dispatcher.stop(self.config.dispatch.drain_timeout)
        if cut:
            log.warning("handler calls cut short at shutdown; they will run again", count=cut)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._observers, return_exceptions=True)
        try:
            async with asyncio.timeout(self.config.dispatch.drain_timeout):
                await state.actions.drain()
        except TimeoutError:
            log.warning("custom-action handlers still running at shutdown are cut short")
        await self._close_resources()
        log.info("stopped", handler_calls=self.dispatcher.calls)


def _dispatch_rates(config: Config) -> dict[str, float]:
    return {name: source.dispatch_rate for name, source in config.sources.items()}


def _needs_restart(old: Config, new: Config) -> list[str]:
    """Keys whose new values a running daemon cannot apply."""
    keys = [
        f"server.{key}"
        for key in (
            "host",
            "port",
            "read_timeout",
            "keepalive_timeout",
            "max_connections",
            "max_connections_per_address",
        )
        if getattr(old.server, key) != getattr(new.server, key)
    ]
    if (old.tls_files() is None) != (new.tls_files() is None):  # HTTPS switched on or off
        keys.append("server.tls_certificate")
    keys += [
        table
        for table in ("metrics", "spool", "dispatch", "frameio", "plugins")
        if getattr(old, table) != getattr(new, table)
    ]
    return keys


async def serve(config: Config, plugins: PluginHost | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit status."""
    # Signals first: a SIGTERM that arrives while starting must still mean a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(config, plugins)

    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        systemd.reloading()
        await daemon.reload()
        systemd.ready(daemon.summary())

    def on_sighup() -> None:
        # Ignored until started: the operator's `systemctl reload` must never kill it.
        if daemon.app is not None:
            task = asyncio.create_task(reload(), name="frameiod-reload")
            reloads.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start()
    except SpoolError as exc:
        log.error("cannot open the spool", error=str(exc))
        return 1
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("cannot start", problem=problem)
        return 2
    except OSError as exc:
        log.error(
            "cannot listen",
            host=config.server.host,
            port=config.server.port,
            error=exc.strerror or str(exc),
        )
        return 1
    _tune_gc()
    # Only now: the port is bound and the spool is open.
    systemd.ready(daemon.summary())
    watchdog = asyncio.create_task(_watchdog(systemd.watchdog_period()), name="frameiod-watchdog")
    await stop.wait()
    systemd.stopping()
    watchdog.cancel()
    for task in reloads:  # a reload that has not applied yet is of no use to a stopping daemon
        task.cancel()
    await asyncio.gather(*reloads, return_exceptions=True)
    await daemon.stop()
    return 0


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for the rest of the process's life.

    Start-up's objects (modules, plugins, configuration) live as long as the process:
    frozen, they are never scanned again. A larger first generation means one collection
    per ~10,000 new container objects rather than per 700, which a request's handful of
    models and dicts reached every few requests. Together ~6 % of ingest (bench/).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(10_000, older, oldest)


async def _watchdog(period: float | None) -> None:
    """Ping systemd's watchdog from the event loop: a blocked loop stops the pings, and
    systemd restarts the daemon."""
    if period is None:
        return
    while True:
        systemd.watchdog_ping()
        await asyncio.sleep(period)
