"""``GET /healthz`` and ``GET /readyz``: is the process up, and can it take deliveries."""

from __future__ import annotations

import asyncio

from aiohttp import web

from frameiod.http.receiver import RECEIVER
from frameiod.logs import get_logger
from frameiod.store.base import SpoolUnavailable

__all__ = ["READY_CHECK_SECONDS", "healthz", "readyz"]

log = get_logger("frameiod.server")

# How long /readyz waits for the spool. A probe must answer even when the store does not:
# before a Redis command's own 2-s timeout, and before a prober's own (Kubernetes': 1 s).
# A store this slow to answer one small write is not ready.
READY_CHECK_SECONDS = 0.5


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 while the process runs."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 once serving with a spool that can take deliveries; 503 before
    that, while stopping, and while the spool cannot (naming why)."""
    receiver = request.app[RECEIVER]
    if not receiver.ready or receiver.stopping:
        status = "stopping" if receiver.stopping else "starting"
        return web.json_response({"status": status}, status=503)
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            await receiver.spool.check()
    except SpoolUnavailable as exc:
        reason, detail = exc.reason, exc.detail
    except TimeoutError:
        reason = "spool_timeout"
        detail = f"the spool did not answer within {READY_CHECK_SECONDS:g}s"
    else:
        if receiver.spool_problem is not None:
            log.info("spool ready again", spool=receiver.spool.describe())
            receiver.spool_problem = None
        return web.json_response({"status": "ready"})
    # Logged when the cause changes, not at every probe: load balancers ask every few seconds.
    if reason != receiver.spool_problem:
        log.warning(
            "spool not ready", spool=receiver.spool.describe(), reason=reason, detail=detail
        )
        receiver.spool_problem = reason
    body = {"status": "spool_unavailable", "reason": reason, "detail": detail}
    return web.json_response(body, status=503)
