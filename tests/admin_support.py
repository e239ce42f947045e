"""What the admin listener's tests share: a daemon with ``[admin]`` on, on either spool, a
test plugin whose handlers fail, succeed or hang on command, and an API client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis_support import RedisServer, redis_spool_lines

from frameiod import App
from frameiod.events import WebhookEvent
from frameiod.testing import RunningDaemon, config_toml, run_daemon

TOKEN = "admin-token-for-tests-0123456789abcdef"
FAILS, LOGS, BLOCKS = "p:fails", "p:logs", "p:blocks"


def admin_table(token: str = TOKEN, *, metrics: bool = False, extra: str = "") -> str:
    """The ``[admin]`` table of a test config: on, a free loopback port."""
    return (
        f'[admin]\nenabled = true\nport = 0\ntoken = "{token}"\n'
        f"metrics = {str(metrics).lower()}\n{extra}"
    )


@dataclass
class Handlers:
    """The test plugin ``p``: ``fails`` (file.ready, one attempt) raises while ``failing``;
    ``logs`` (file.ready) succeeds; ``blocks`` (comment.created) waits for ``release``."""

    failing: bool = True
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> App:
        app = App()

        @app.on_webhook("file.ready", max_attempts=1)
        async def fails(event: WebhookEvent) -> None:
            if self.failing:
                raise RuntimeError("upstream said no: " + "x" * 400)

        @app.on_webhook("file.ready")
        async def logs(event: WebhookEvent) -> None:
            return None

        @app.on_webhook("comment.created", timeout=60)
        async def blocks(event: WebhookEvent) -> None:
            self.started.set()
            await self.release.wait()

        return app


class Admin:
    """A client of a daemon's admin listener."""

    def __init__(self, daemon: RunningDaemon, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.session = session

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.daemon.daemon.admin_port}{path}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = TOKEN,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """``method path`` with the bearer ``token`` (None: no header); status and JSON."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url(path), json=body, headers=sent
        ) as response:
            text = await response.text()
            assert response.content_type == "application/json", (response.status, text)
            return response.status, await response.json()

    async def get(self, path: str, **options: Any) -> Any:
        """GET ``path``; it must answer 200."""
        status, data = await self.call("GET", path, **options)
        assert status == 200, (status, data)
        return data

    async def post(self, path: str, body: Any) -> Any:
        """POST ``body`` to ``path``; it must answer 200."""
        status, data = await self.call("POST", path, body=body)
        assert status == 200, (status, data)
        return data


def spool_table(kind: str, directory: Path, redis_server: RedisServer | None) -> str:
    """The ``[spool]`` lines for a backend."""
    if kind == "sqlite":
        return f'path = "{directory / "frameiod.db"}"'
    assert redis_server is not None
    return redis_spool_lines(redis_server.url, f"a{uuid.uuid4().hex[:10]}")


@asynccontextmanager
async def admin_daemon(
    directory: Path,
    spool: str,
    handlers: Handlers,
    *,
    admin: str | None = None,
    server: str = "",
) -> AsyncIterator[tuple[RunningDaemon, Admin]]:
    """A daemon with the test plugin and ``[admin]`` on, and a client of its admin API."""
    text = config_toml(
        spool=spool,
        server=server,
        dispatch='backoff_initial = "1s"',
        extra=admin if admin is not None else admin_table(),
    )
    async with (
        run_daemon({"p": handlers.app()}, config_text=text, directory=directory) as daemon,
        aiohttp.ClientSession() as session,
    ):
        yield daemon, Admin(daemon, session)
