"""The public routes on an aiohttp application: webhooks, custom actions, probes, metrics.

The routes find what they share under `RECEIVER`, a `Receiver` put there when the
application starts (`frameiod.daemon.create_app` builds it once the spool is open and the
plugins have started; `receiver_app` builds a bare one for tests and tools).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from frameiod.config import Config
from frameiod.http.action_route import receive_action
from frameiod.http.fallback import add_fallback_routes
from frameiod.http.live import Live
from frameiod.http.probes import READY_CHECK_SECONDS, healthz, readyz
from frameiod.http.receiver import RECEIVER, Observe, Receiver
from frameiod.http.webhooks import receive_webhook
from frameiod.metrics import Metrics
from frameiod.plugins.routing import Routes
from frameiod.ratelimit import Limits, SourceLimits
from frameiod.store.base import SpoolBackend

__all__ = ["READY_CHECK_SECONDS", "SHUTDOWN_TIMEOUT", "add_routes", "receiver_app"]

# In-flight requests get this long to finish after SIGTERM before their connections close.
SHUTDOWN_TIMEOUT = 10.0


async def _started(app: web.Application) -> None:
    app[RECEIVER].started()


def add_routes(app: web.Application, config: Config, metrics: Metrics) -> None:
    """Serve the public routes on ``app``; `RECEIVER` must be set before it finishes
    starting (a ``cleanup_ctx`` step), and ``/readyz`` says ready once it has."""
    app.router.add_post("/webhooks/{source}", receive_webhook)
    app.router.add_post("/actions/{source}", receive_action)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # With [admin] metrics, /metrics is served on the admin listener only.
    if config.metrics.enabled and not (config.admin.enabled and config.admin.metrics):
        app.router.add_get(config.metrics.path, make_aiohttp_handler(metrics.exposed))
    add_fallback_routes(app)
    # After every cleanup_ctx step: aiohttp runs those first, as the first startup signal.
    app.on_startup.append(_started)


def receiver_app(
    config: Config,
    *,
    spool: SpoolBackend,
    metrics: Metrics,
    routes: Routes | None = None,
    clock: Callable[[], float] = time.time,
    observe: Observe | None = None,
    limiter: Callable[[Limits], SourceLimits] | None = None,
) -> web.Application:
    """An application serving the public routes on ``spool``, with nothing else started.

    ``routes`` decides which handlers get a delivery, and contributes the secrets declared
    on handlers (see `frameiod.http.live.source_keys`); ``limiter`` builds the per-source
    rate limiter (default: in memory).
    """
    app = web.Application()
    routes = routes or Routes(())
    app[RECEIVER] = Receiver(
        Live.build(config, routes, limiter=limiter),
        routes=routes,
        spool=spool,
        metrics=metrics,
        clock=clock,
        observe=observe,
    )
    add_routes(app, config, metrics)
    return app
