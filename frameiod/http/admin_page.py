"""The operator's page (``GET /`` on the admin listener) and its two assets.

The page is HTML rendered here with nothing of the queue in it: the token lives in the
browser's ``sessionStorage`` and goes out as the bearer header of each API call (no
cookie, so no cross-site request can carry it), and ``console.js`` fills the page from the
API, writing every value as text, never as markup (an event's type and body come from
outside). Every asset is served from the package; the Content-Security-Policy allows
nothing else, inline scripts included.
"""

from __future__ import annotations

import html
from importlib import resources

from aiohttp import web

from frameiod import __version__

__all__ = ["PAGE_HEADERS", "add_page_routes", "render_page"]

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_ASSETS = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>frameiod console</title>
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script>
</head>
<body>
<header><h1>frameiod</h1><span class="version">{version}</span>
<span id="status" role="status"></span>
<button type="button" id="sign-out" hidden>Sign out</button></header>
<main>
<form id="sign-in" hidden>
  <label for="token">Admin token (<code>[admin] token</code>)</label>
  <input id="token" type="password" autocomplete="off" required>
  <button type="submit">Sign in</button>
  <p id="sign-in-error" class="error" role="alert"></p>
</form>
<div id="console" hidden>
  <section id="stats" aria-label="Queue"><h2>Queue</h2><div id="stats-body"></div></section>
  <section aria-label="Dead letters"><h2>Dead letters</h2>
    <table id="dead"><thead><tr><th>Received</th><th>Type</th><th>Source</th><th>Handler</th>
    <th>State</th><th>Tries</th><th>Last error</th></tr></thead><tbody></tbody></table>
    <p class="pager"><button type="button" id="dead-more">Older dead letters</button></p>
  </section>
  <section aria-label="Deliveries"><h2>Deliveries</h2>
    <form id="filters">
      <label>State <select name="state"><option value="">any</option>
        <option>pending</option><option>running</option><option>done</option>
        <option>dead</option></select></label>
      <label>Source <input name="source"></label>
      <label>Handler <input name="handler"></label>
      <label>Event type <input name="event_type"></label>
      <button type="submit">Filter</button>
    </form>
    <table id="deliveries"><thead><tr><th>Received</th><th>Type</th><th>Source</th>
    <th>Handler</th><th>State</th><th>Tries</th><th>Last error</th></tr></thead>
    <tbody></tbody></table>
    <p class="pager"><button type="button" id="newest">Newest</button>
    <button type="button" id="older">Older</button></p>
  </section>
  <section id="detail" aria-label="Delivery" hidden><h2>Delivery <code id="detail-id"></code></h2>
    <p><button type="button" id="replay">Replay</button>
    <button type="button" id="purge">Purge</button>
    <button type="button" id="close">Close</button></p>
    <dl id="detail-fields"></dl>
    <h3>Last error</h3><pre id="detail-error"></pre>
    <h3>Body</h3><pre id="detail-body"></pre>
  </section>
</div>
</main>
</body>
</html>
"""


def render_page() -> str:
    """The page's HTML."""
    return _PAGE.format(version=html.escape(__version__))


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=render_page(), content_type="text/html", headers=PAGE_HEADERS)


def add_page_routes(app: web.Application) -> None:
    """Serve the page at ``/`` and its assets under ``/static/`` on ``app``; the assets are
    read from the package once, here."""
    app.router.add_get("/", _page)
    folder = resources.files("frameiod.http") / "admin_static"
    for name, content_type in _ASSETS.items():
        body = (folder / name).read_bytes()

        async def asset(
            request: web.Request, body: bytes = body, content_type: str = content_type
        ) -> web.Response:
            return web.Response(body=body, content_type=content_type, headers=PAGE_HEADERS)

        app.router.add_get(f"/static/{name}", asset)
