"""What the webhook listener answers outside its routes: ``GET /`` says what is listening,
and a path or method it does not serve gets the same JSON error shape as every refusal,
a log line and a count (a webhook registered at a wrong URL shows there first)."""

from __future__ import annotations

from aiohttp import web

from frameiod import __version__
from frameiod.http.receiver import RECEIVER
from frameiod.logs import get_logger

__all__ = ["add_fallback_routes"]

log = get_logger("frameiod.server")

# Longer paths are cut in the log line: the path is whatever the sender wrote.
_PATH_LOGGED = 200


async def _root(request: web.Request) -> web.Response:
    """``GET /``: the daemon's name and version, and where its probes are."""
    return web.json_response(
        {
            "name": "frameiod",
            "version": __version__,
            "links": {"healthz": "/healthz", "readyz": "/readyz"},
        }
    )


async def _no_route(request: web.Request) -> web.Response:
    """Any request no other route took: 405 naming the allowed methods when another route
    serves the path, 404 otherwise."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        _, methods = await resource.resolve(request)
        allowed |= methods
    _report(request, 405 if allowed else 404)
    if allowed:
        body = {"error": "method_not_allowed", "allowed": sorted(allowed)}
        headers = {"Allow": ", ".join(sorted(allowed))}
        return web.json_response(body, status=405, headers=headers)
    return web.json_response({"error": "not_found", "path": request.path}, status=404)


def _report(request: web.Request, status: int) -> None:
    """Log and count a request no route served. Near the webhook and action routes it is
    most likely Frame.io at a URL registered wrongly (a trailing slash, a misspelt
    prefix), whose every retry fails the same way: a warning, saying where they are.
    Elsewhere it is most likely a scanner: info."""
    receiver = request.app[RECEIVER]
    receiver.metrics.unrouted_requests.labels(status=str(status)).inc()
    remote = receiver.live.sender(request)
    fields = {"method": request.method, "path": request.path[:_PATH_LOGGED], "status": status}
    if request.path.startswith(("/webhook", "/action")):
        log.warning(
            "request matched no route",
            **fields,
            remote=remote,
            hint="webhooks are served at /webhooks/<source> and actions at "
            "/actions/<source>, by POST, without a trailing slash: check the URL "
            "registered with Frame.io",
        )
    else:
        log.info("request matched no route", **fields, remote=remote)


def add_fallback_routes(app: web.Application) -> None:
    """Serve ``GET /`` and the JSON 404/405 on ``app``; call it after every other route.

    The catch-all is a route rather than a middleware so that requests to the real routes,
    the webhooks among them, pay nothing for it: aiohttp tries a path's most specific
    resources first and reaches this one only when they all declined."""
    app.router.add_get("/", _root)
    app.router.add_route("*", "/{path:.*}", _no_route)
