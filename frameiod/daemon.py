"""The daemon's lifecycle: `create_app` builds everything a running frameiod needs, each
part started and stopped by a ``cleanup_ctx`` step in order (the spool, then the plugins
with the API client, the receiver, dispatching, maintenance); `Daemon` listens, reloads,
and stops; `serve` adds signals and systemd.

This is where the parts meet (server → spool → dispatch → handlers); the server and the
dispatcher never import each other.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

from frameiod import __version__, idle
from frameiod.client import FrameioClient
from frameiod.config import Config, ConfigError, dev_secret_problem, load_config
from frameiod.dispatch.dispatcher import Dispatcher
from frameiod.dispatch.retry import RetryPolicy
from frameiod.events import WebhookEvent
from frameiod.http.admin import admin_app
from frameiod.http.checks import answer_malformed
from frameiod.http.connections import Listener, ServedTls, tls_context
from frameiod.http.live import Live
from frameiod.http.receiver import RECEIVER, Receiver
from frameiod.http.server import SHUTDOWN_TIMEOUT, add_routes
from frameiod.logs import configure_logging, get_logger
from frameiod.metrics import Metrics
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.plugins.routing import Routes
from frameiod.store.base import SpoolBackend, SpoolUnavailable, replay_window
from frameiod.store.open import Backend, open_backend
from frameiod.tasks import TaskSet

__all__ = ["CLIENT", "DISPATCHER", "ROUTES", "STORE", "Daemon", "create_app"]

log = get_logger("frameiod.daemon")

# How often done deliveries are purged and the spool gauges refreshed.
_MAINTENANCE_SECONDS = 5.0

STORE = web.AppKey("store", Backend)
CLIENT = web.AppKey("client", FrameioClient)
"""Set only when ``[frameio]`` is configured."""
ROUTES = web.AppKey("routes", Routes)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)


async def _open_store(config: Config) -> Backend:
    """Open the configured spool (raises `SpoolError`), handing its writes over when the
    daemon's loop runs out of work (`frameiod.idle`)."""
    return await open_backend(config, idle.call_when_idle)


def create_app(config: Config, plugins: PluginHost, metrics: Metrics) -> web.Application:
    """The daemon's application: the public routes, and a ``cleanup_ctx`` step per part.

    Nothing starts here: the steps run when the application starts (`Daemon.start`), in
    order, and stop in reverse; a step that fails to start leaves only the steps before it
    to be stopped. Raises from the steps: `SpoolError`, and `ConfigError` for a problem
    only visible then (two plugins answering one action).
    """
    app = web.Application()
    add_routes(app, config, metrics)
    steps = _Steps(config, plugins, metrics)
    app.cleanup_ctx.extend(
        [steps.store, steps.plugins_and_client, steps.receiver, steps.dispatching, steps.maintain]
    )
    return app


class _Steps:
    """The parts of a running daemon, each a ``cleanup_ctx`` step: it starts its part and
    puts it under its `web.AppKey`, yields while the daemon runs, then stops it."""

    def __init__(self, config: Config, plugins: PluginHost, metrics: Metrics) -> None:
        self.config = config
        self.plugins = plugins
        self.metrics = metrics

    async def store(self, app: web.Application) -> AsyncIterator[None]:
        """The spool, and the rate limiter matching it."""
        app[STORE] = backend = await _open_store(self.config)
        spool = backend.spool
        if spool.recovered:
            log.warning(
                "deliveries interrupted by a crash will run again",
                count=spool.recovered,
                spool=spool.describe(),
            )
        try:
            yield
        finally:
            await spool.close()

    async def plugins_and_client(self, app: web.Application) -> AsyncIterator[None]:
        """The API client, the plugins' start-up and shutdown, and the routes they offer."""
        config = self.config
        client = FrameioClient(config.frameio) if config.frameio.configured else None
        if client is not None:
            app[CLIENT] = client
        try:
            await self.plugins.startup(config, client.api if client else None)
            app[ROUTES] = _routes(config, self.plugins, self.metrics)
            yield
        finally:
            await self.plugins.shutdown()
            if client is not None:
                await client.close()

    async def receiver(self, app: web.Application) -> AsyncIterator[None]:
        """What the public routes use; at the end, observers and late actions finish."""
        backend, routes, plugins = app[STORE], app[ROUTES], self.plugins
        observers = TaskSet()

        def observe(event: WebhookEvent, source: str) -> None:
            # Observers run beside the request, never inside it: the 202 does not wait.
            observers.spawn(plugins.notify("frameiod_event_accepted", event=event, source=source))

        app[RECEIVER] = receiver = Receiver(
            Live.build(self.config, routes, limiter=backend.limiter),
            routes=routes,
            spool=backend.spool,
            metrics=self.metrics,
            # Without observers, no task per accepted event.
            observe=observe if plugins.observes("frameiod_event_accepted") else None,
            around=plugins.around(),
        )
        yield
        await observers.wait()
        try:
            async with asyncio.timeout(receiver.config.dispatch.drain_timeout):
                await receiver.actions.drain()
        except TimeoutError:
            log.warning("custom-action handlers still running at shutdown are cut short")

    async def dispatching(self, app: web.Application) -> AsyncIterator[None]:
        """The dispatcher; at the end, running handler calls get ``drain_timeout``."""
        dispatch = self.config.dispatch
        app[DISPATCHER] = dispatcher = Dispatcher(
            app[STORE].spool,
            app[ROUTES],
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
            around=self.plugins.around(),
        )
        dispatcher.set_dispatch_rates(_dispatch_rates(self.config))
        task = asyncio.create_task(dispatcher.run(), name="frameiod-dispatch")
        try:
            yield
        finally:
            cut = await dispatcher.stop(app[RECEIVER].config.dispatch.drain_timeout)
            if cut:
                log.warning("handler calls cut short at shutdown; they will run again", count=cut)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def maintain(self, app: web.Application) -> AsyncIterator[None]:
        """Purging and the spool gauges, every few seconds."""
        task = asyncio.create_task(
            _maintain(app[STORE].spool, app[RECEIVER], self.metrics), name="frameiod-maintenance"
        )
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _routes(config: Config, plugins: PluginHost, metrics: Metrics) -> Routes:
    """The handlers the started plugins offer (raises `ConfigError`), warned about and
    registered with the metrics."""
    routes = plugins.routes()
    for handler in routes.handlers:
        if handler.source not in config.sources and not handler.secrets:
            log.warning(
                "handler listens on a source that is not configured; it will get nothing",
                plugin=handler.plugin,
                handler=handler.name,
                source=handler.source,
            )
    metrics.register_plugins(plugins.plugins.values())
    metrics.register_handlers(routes.handlers)
    metrics.register_actions(routes.actions.values())
    return routes


async def _maintain(spool: SpoolBackend, receiver: Receiver, metrics: Metrics) -> None:
    """Purge old done deliveries and refresh the spool gauges, every few seconds.

    Seen requests are remembered from the tolerances in force now (a reload changes
    them), whatever ``keep_done`` says.
    """
    while True:
        try:
            window = replay_window(key.tolerance for key in receiver.sources.values())
            purged = await spool.purge_done(receiver.config.spool.keep_done, window)
            if purged:
                log.info("purged done events", count=purged)
            metrics.spool(*await spool.gauges())
        except SpoolUnavailable as exc:
            log.warning("spool maintenance failed", reason=exc.reason, detail=exc.detail)
        await asyncio.sleep(_MAINTENANCE_SECONDS)


class Daemon:
    """One running frameiod: `start` it, then `stop` it (also usable from tests in-process)."""

    def __init__(self, config: Config, plugins: PluginHost | None = None) -> None:
        self.config = config
        self.plugins = plugins or PluginHost(make_plugin_manager(load_entrypoints=False))
        self.metrics = Metrics(config.sources, __version__)
        self.app = create_app(config, self.plugins, self.metrics)
        self.listener: Listener | None = None
        """The runner and sockets, once started."""
        self.admin: Listener | None = None
        """The admin listener's runner and sockets, once started (``[admin] enabled``)."""
        self._tls: ServedTls | None = None
        self._reloading = asyncio.Lock()

    @property
    def receiver(self) -> Receiver:
        """The public routes' state (raises KeyError before `start`)."""
        return self.app[RECEIVER]

    @property
    def spool(self) -> SpoolBackend:
        """The open spool (raises KeyError before `start`)."""
        return self.app[STORE].spool

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher (raises KeyError before `start`)."""
        return self.app[DISPATCHER]

    @property
    def client(self) -> FrameioClient | None:
        """The Frame.io API client, when ``[frameio]`` is configured."""
        return self.app.get(CLIENT)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) of every socket listening (empty before `start`)."""
        return self.listener.addresses if self.listener is not None else []

    @property
    def port(self) -> int:
        """The port the daemon listens on (useful when the config says 0)."""
        return self.addresses[0][1]

    @property
    def admin_port(self) -> int:
        """The port the admin listener listens on (raises if it does not)."""
        if self.admin is None:
            raise RuntimeError("the admin listener is not running")
        return self.admin.addresses[0][1]

    async def start(self) -> None:
        """Open the spool, start plugins, start dispatching, bind the port.

        Raises `SpoolError` if the spool cannot be used, `ConfigError` for a problem only
        visible now (TLS files, two plugins answering one action), OSError if it cannot
        listen. Whatever was started is stopped again before raising.
        """
        context = tls_context(self.config)
        self._tls = ServedTls(context) if context is not None else None
        server = self.config.server
        # access_log=None: the one line per delivery replaces aiohttp's access log.
        try:
            self.listener = listener = await Listener.start(
                self.app,
                read_timeout=server.read_timeout,
                max_connections=server.max_connections,
                max_connections_per_address=server.max_connections_per_address,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
                metrics=self.metrics,
                malformed=functools.partial(answer_malformed, self.app),
                access_log=None,
                keepalive_timeout=server.keepalive_timeout,
                auto_decompress=False,
                # After refusing a body midway (408, 413), how long to keep reading what is
                # still coming so the client sees the answer: aiohttp's default would hold
                # slow clients.
                lingering_time=1.0,
            )
        except BaseException:
            # Whatever steps started are stopped (aiohttp's cleanup_ctx keeps count).
            await self.app.cleanup()
            raise
        listener.guard.trust(self.receiver.live.proxies)
        try:
            await listener.bind(
                server.host, server.port, self._tls.listening if self._tls else None
            )
            # Judged on the sockets themselves: a name like "localhost" binds whatever it
            # resolves to.
            self._check_dev_secret(self.config)
            await self._start_admin()
        except (ConfigError, OSError):
            await listener.cleanup()
            self.listener = None
            raise
        host, port = self.addresses[0]
        log.info(
            "listening",
            host=host,
            port=port,
            version=__version__,
            sources=sorted(self.receiver.sources),
            plugins=self.plugins.loaded,
            config=str(self.config.path),
            spool=self.spool.describe(),
            handover=self.app[STORE].handover,
        )

    async def _start_admin(self) -> None:
        """Serve the admin listener (``[admin]``) on its own socket, if enabled: the same
        connection limits and TLS as the webhook listener. Raises OSError."""
        admin, server = self.config.admin, self.config.server
        if not admin.enabled:
            return
        self.admin = listener = await Listener.start(
            admin_app(self.receiver),
            read_timeout=server.read_timeout,
            max_connections=server.max_connections,
            max_connections_per_address=server.max_connections_per_address,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=None,
            keepalive_timeout=server.keepalive_timeout,
        )
        listener.guard.trust(self.receiver.live.proxies)
        try:
            await listener.bind(admin.host, admin.port, self._tls.listening if self._tls else None)
        except OSError:
            await listener.cleanup()
            self.admin = None
            raise
        host, port = listener.addresses[0]
        log.info("admin listening", host=host, port=port, metrics=admin.metrics)

    def _check_dev_secret(self, config: Config) -> None:
        """Raise `ConfigError` if ``config`` would accept the development secret on a
        socket this daemon has bound beyond loopback."""
        problem = dev_secret_problem(config, [host for host, _ in self.addresses])
        if problem:
            raise ConfigError([f"{config.path}: {problem}"])

    def summary(self) -> str:
        """A one-line status for systemd (``systemctl status``)."""
        host, port = self.addresses[0]
        return (
            f"listening on {host}:{port}; {len(self.receiver.sources)} source(s), "
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
        receiver = self.receiver
        try:
            # In a thread: a slow disk or an odd file must not stop the loop serving requests.
            new, renewed = await asyncio.to_thread(self._read_config)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(outcome="error").inc()
            for problem in exc.problems:
                log.error("config reload refused; the old config stays in force", problem=problem)
            return False
        live = Live.build(
            new, receiver.routes, limiter=self.app[STORE].limiter, previous=receiver.live
        )
        changed = _needs_restart(self.config, new)
        old_log = self.config.log
        receiver.reload(live)  # one assignment: every request sees the old config or the new
        if self._tls is not None and renewed is not None:
            self._tls.use(renewed)
        for each in (self.listener, self.admin):
            if each is not None:
                each.guard.trust(live.proxies)
        self.config = new
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
        listener = self.listener
        if listener is None:
            raise RuntimeError("not started")
        receiver, dispatcher = self.receiver, self.dispatcher
        receiver.stop_accepting()
        log.info("stopping", in_flight=receiver.in_flight, running=dispatcher.running)
        listener.stop_listening()
        if self.admin is not None:
            # Before the spool closes under it: its requests end first.
            await self.admin.cleanup()
            self.admin = None
        # aiohttp stops reading from every connection once its runner's cleanup begins, so
        # a request whose body is still arriving would stall there: let those finish first.
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await receiver.drain()
        except TimeoutError:
            log.warning("requests still in flight at shutdown", in_flight=receiver.in_flight)
        # Closes the connections, then runs the cleanup_ctx steps in reverse.
        await listener.cleanup()
        log.info("stopped", handler_calls=dispatcher.calls)


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
    # The admin token applies at once; where and whether it listens, at restart.
    keys += [
        f"admin.{key}"
        for key in ("enabled", "host", "port", "metrics")
        if getattr(old.admin, key) != getattr(new.admin, key)
    ]
    if (old.tls_files() is None) != (new.tls_files() is None):  # HTTPS switched on or off
        keys.append("server.tls_certificate")
    keys += [
        table
        for table in ("metrics", "spool", "dispatch", "frameio", "plugins")
        if getattr(old, table) != getattr(new, table)
    ]
    return keys
