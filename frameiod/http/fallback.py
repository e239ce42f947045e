"""What the webhook listener answers outside its routes: ``GET /`` says what is listening,
and a path or method it does not serve gets the same JSON error shape as every refusal."""

from __future__ import annotations

from aiohttp import web

from frameiod import __version__

__all__ = ["add_fallback_routes"]


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
    if allowed:
        body = {"error": "method_not_allowed", "allowed": sorted(allowed)}
        headers = {"Allow": ", ".join(sorted(allowed))}
        return web.json_response(body, status=405, headers=headers)
    return web.json_response({"error": "not_found", "path": request.path}, status=404)


def add_fallback_routes(app: web.Application) -> None:
    """Serve ``GET /`` and the JSON 404/405 on ``app``; call it after every other route.

    The catch-all is a route rather than a middleware so that requests to the real routes,
    the webhooks among them, pay nothing for it: aiohttp tries a path's most specific
    resources first and reaches this one only when they all declined."""
    app.router.add_get("/", _root)
    app.router.add_route("*", "/{path:.*}", _no_route)
