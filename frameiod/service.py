"""The daemon as a service: signals, systemd's notifications and watchdog, and the
garbage collector tuned for a long-lived process (`serve`, what ``frameiod run`` runs)."""

from __future__ import annotations

import asyncio
import gc
import signal

from frameiod import systemd
from frameiod.config import Config, ConfigError
from frameiod.daemon import Daemon
from frameiod.logs import get_logger
from frameiod.plugins.host import PluginHost
from frameiod.store.base import SpoolError
from frameiod.tasks import TaskSet

__all__ = ["serve"]

log = get_logger("frameiod.daemon")


async def serve(config: Config, plugins: PluginHost | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit status."""
    # Signals first: a SIGTERM that arrives while starting must still mean a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(config, plugins)

    reloads = TaskSet()

    async def reload() -> None:
        systemd.reloading()
        await daemon.reload()
        systemd.ready(daemon.summary())

    def on_sighup() -> None:
        # Ignored until started: the operator's `systemctl reload` must never kill it.
        if daemon.listener is not None:
            reloads.spawn(reload(), name="frameiod-reload")

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
    reloads.cancel()  # a reload that has not applied yet is of no use to a stopping daemon
    await reloads.wait()
    await daemon.stop()
    return 0


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for the rest of the process's life.

    Start-up's objects (modules, plugins, configuration) live as long as the process:
    frozen, they are never scanned again. A larger first generation means one collection
    per ~10,000 new container objects rather than per 700, which a request's handful of
    models and dicts reached every few requests.
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
