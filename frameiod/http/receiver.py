"""What the public routes share, stored on the application under `RECEIVER`.

Built once, when the application starts (the spool and the plugins' routes exist only
then), and owned by this package: the configuration in force changes only through
`Receiver.reload`, and taking requests ends only through `Receiver.stop_accepting`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from frameiod.config import Config
from frameiod.events import WebhookEvent
from frameiod.http.action_repeats import ActionRepeats
from frameiod.http.actions import ActionRunner
from frameiod.http.live import Live, SourceKeys
from frameiod.metrics import Metrics
from frameiod.plugins.around import Around
from frameiod.plugins.handlers import Reception
from frameiod.plugins.routing import Routes
from frameiod.store.base import SpoolBackend

__all__ = ["RECEIVER", "Observe", "Receiver", "wrapped_receive"]

Observe = Callable[[WebhookEvent, str], None]
"""Told of each newly accepted event (the daemon passes it on to observer plugins)."""


class Receiver:
    """The spool, routes, metrics and configuration the webhook and action routes use,
    and the requests they have in flight."""

    __slots__ = (
        "_ready",
        "action_repeats",
        "actions",
        "around_receive",
        "clock",
        "idle",
        "in_flight",
        "live",
        "metrics",
        "observe",
        "routes",
        "spool",
        "spool_problem",
        "stopping",
    )

    def __init__(
        self,
        live: Live,
        *,
        routes: Routes,
        spool: SpoolBackend,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        observe: Observe | None = None,
        around: Around | None = None,
    ) -> None:
        self.live = live
        self.routes = routes
        self.spool = spool
        self.metrics = metrics
        self.clock = clock
        self.observe = observe
        self.actions = ActionRunner(
            around if around and around.wrapped["frameiod_call_action"] else None
        )
        self.action_repeats = ActionRepeats(clock)
        self.around_receive = around if around and around.wrapped["frameiod_receive"] else None
        """Set when a plugin wraps ``frameiod_receive``: the routes then answer through it."""
        self.stopping = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        """Set when the last request in flight ends."""
        self._ready = False
        self.spool_problem: str | None = None
        """Why the spool was not ready at the last ``/readyz``, if it was not (for the log)."""
        metrics.add_sources(live.sources)

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self.live.config

    @property
    def sources(self) -> Mapping[str, SourceKeys]:
        """The sources in force, with their secrets."""
        return self.live.sources

    @property
    def ready(self) -> bool:
        """Whether the application has started and not begun to stop (``/readyz``)."""
        return self._ready and not self.stopping

    def started(self) -> None:
        """Every start-up step has run: ``/readyz`` may say ready."""
        self._ready = True

    def reload(self, live: Live) -> None:
        """Put ``live`` in force: requests that start from now on see it whole."""
        self.metrics.add_sources(live.sources)
        self.live = live

    def stop_accepting(self) -> None:
        """Refuse new webhooks and actions with 503 from now on (the daemon is stopping)."""
        self.stopping = True

    async def drain(self) -> None:
        """Wait until no request is in flight (bound it with ``asyncio.timeout``)."""
        if self.in_flight:
            self.idle.clear()
            await self.idle.wait()


RECEIVER = web.AppKey("receiver", Receiver)


Receive = Callable[[web.Request, Reception | None], Awaitable[web.Response]]
"""A public route's own work, given the `Reception` wrappers see (None without any)."""


async def wrapped_receive(request: web.Request, kind: str, receive: Receive) -> web.Response:
    """Run ``receive`` for ``request`` inside the plugins' ``frameiod_receive`` wrappers,
    if any implement it; ``kind`` is "webhook" or "action"."""
    around = request.app[RECEIVER].around_receive
    if around is None:
        return await receive(request, None)
    reception = Reception(request, kind, request.match_info["source"])
    return await around.receive(reception, lambda reception: receive(request, reception))
