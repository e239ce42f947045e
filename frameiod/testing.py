"""Test helpers for plugin authors, registered with pytest through the ``pytest11`` entry point::

    async def test_my_plugin(frameiod_daemon):
        daemon = await frameiod_daemon({"my_plugin": my_app}, settings="[plugins.my_plugin]\\n...")
        sent = await daemon.send("file.ready")
        assert sent.status == 202
        assert [o.status for o in sent.outcomes] == ["ok"]

`frameiod_daemon` starts a real daemon in the test's event loop on a free loopback port
(a test using it runs on the event loop the daemon runs on in production),
with only the plugin objects you give it (no entry points), and a temporary config.
``send`` posts a correctly signed event and waits until its handlers have finished.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frameiod.config import Config, load_config
from frameiod.daemon import Daemon
from frameiod.events import example_action, example_payload
from frameiod.idle import new_event_loop
from frameiod.plugins.handlers import Outcome
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = [
    "TEST_SECRET",
    "RunningDaemon",
    "Sent",
    "config_toml",
    "frameiod_daemon",
    "run_daemon",
]

TEST_SECRET = "frameiod-test-secret"  # noqa: S105 - a fixed secret for local tests only


def config_toml(
    *,
    secret: str = TEST_SECRET,
    host: str = "127.0.0.1",
    port: int = 0,
    server: str = "",
    log: str = "",
    spool: str = "",
    dispatch: str = "",
    source: str = "",
    extra: str = "",
) -> str:
    """The text of a ``config.toml``: a listener on ``host``:``port`` (0: a free port) and
    one source ``default`` signed with ``secret``.

    ``server``, ``log``, ``spool``, ``dispatch`` and ``source`` are more lines for
    ``[server]``, ``[log]``, ``[spool]``, ``[dispatch]`` and ``[sources.default]`` (a table
    left empty is left out); ``extra`` is more TOML after them all, e.g. plugin tables.
    """
    lines = ["[server]", f'host = "{host}"', f"port = {port}", server]
    for table, text in (("log", log), ("spool", spool), ("dispatch", dispatch)):
        if text:
            lines += [f"[{table}]", text]
    lines += ["[sources.default]", f"secrets = [{json.dumps(secret)}]", source, extra]
    return "\n".join(lines) + "\n"


@dataclass
class Sent:
    """The daemon's answer to one event, and how its handlers ended."""

    status: int
    body: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)
    """The event as sent."""
    outcomes: list[Outcome] = field(default_factory=list)
    """How each handler call ended (empty when no handler wanted the event)."""

    @property
    def id(self) -> str | None:
        """frameiod's event id, when the event was accepted."""
        return self.body.get("id")


class RunningDaemon:
    """A daemon started by `run_daemon`, and a signed-request client for it."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.config: Config = daemon.config
        self._session = session

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.daemon.port

    def url(self, path: str = "/webhooks/default") -> str:
        """An absolute URL on the daemon."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape ``/metrics``: ``{(sample name, sorted label pairs): value}``."""
        async with self._session.get(self.url(self.config.metrics.path)) as response:
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def act(
        self,
        action: str,
        *,
        data: dict[str, Any] | None = None,
        source: str = "default",
        secret: str | None = None,
        **fields: Any,
    ) -> tuple[int, Any]:
        """Send a signed custom-action request (``data``: a form submission); return the
        status and the decoded answer (None for an empty one)."""
        payload = {**example_action(action, data=data), **fields}
        return await self.post(
            json.dumps(payload).encode(), source=source, secret=secret, path="actions"
        )

    async def post(
        self,
        body: bytes,
        *,
        source: str = "default",
        secret: str | None = None,
        timestamp: int | None = None,
        path: str = "webhooks",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST ``body`` to ``/<path>/<source>``, signed with ``secret`` (default: the
        source's first configured secret), with more ``headers`` if given (a sender's
        ``traceparent``); return the status and JSON answer (None when the answer is
        empty)."""
        secret = secret or self.config.sources[source].secrets[0].reveal()
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sent = {
            **(headers or {}),
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(secret, body, ts),
        }
        async with self._session.post(
            self.url(f"/{path}/{source}"), data=body, headers=sent
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def send(
        self,
        event_type: str = "file.ready",
        *,
        source: str = "default",
        secret: str | None = None,
        wait: bool = True,
        **fields: Any,
    ) -> Sent:
        """Send a Frame.io-shaped event of ``event_type`` (``fields`` override parts of the
        payload, e.g. ``resource={"id": "f1", "type": "file"}``); unless ``wait`` is false,
        return once every handler it reached has finished."""
        payload = {**example_payload(event_type), **fields}
        status, body = await self.post(json.dumps(payload).encode(), source=source, secret=secret)
        sent = Sent(status, body, payload)
        if wait and status == 202:
            sent.outcomes = await self.wait_for(body["id"])
        return sent

    async def wait_for(self, event_id: str, *, settled: bool = False) -> list[Outcome]:
        """Wait until every handler of an accepted event has been called once (with
        ``settled``: until each succeeded or gave up after its retries); return the latest
        outcome of each."""
        assert self.daemon.dispatcher is not None, "the daemon is not running"
        return await self.daemon.dispatcher.wait_for(event_id, settled=settled)


@asynccontextmanager
async def run_daemon(
    plugins: Mapping[str, object] | None = None,
    *,
    settings: str = "",
    config_text: str | None = None,
    directory: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningDaemon]:
    """Run a daemon with exactly ``plugins`` (name → module, `App` or hook object).

    The config is `config_toml`'s: a loopback listener on a free port with one source
    ``default`` signed with `TEST_SECRET`, plus ``settings`` (more TOML, e.g. plugin
    tables); ``config_text`` replaces it entirely; ``environ`` (default: the process
    environment) is where ``env:`` secrets and ``$STATE_DIRECTORY`` are looked up. Config
    errors, the plugins' included, raise `frameiod.config.ConfigError`.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = directory or Path(scratch)
        path = folder / "config.toml"
        path.write_text(config_text if config_text is not None else config_toml(extra=settings))
        config = load_config(path, environ=environ)
        host = PluginHost(make_plugin_manager(load_entrypoints=False))
        for name, plugin in (plugins or {}).items():
            host.add(plugin, name)  # one that pluggy refuses is recorded as failed
        host.configure(config)
        daemon = Daemon(config, host)
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as session:
                yield RunningDaemon(daemon, session)
        finally:
            await daemon.stop()


DaemonFactory = Callable[..., Awaitable[RunningDaemon]]


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests that use `frameiod_daemon` run on the daemon's production event loop; other
    tests on the one the event loop policy makes, as without this hook (pytest-asyncio's
    hook; its releases before the hook run every test on the policy's loop)."""
    if "frameiod_daemon" in getattr(item, "fixturenames", ()):
        return {"frameiod": new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


async def _frameiod_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """``await frameiod_daemon(plugins, **options)`` starts a daemon with exactly
    ``plugins`` and returns its `RunningDaemon`; ``options`` are `run_daemon`'s, its
    folder the test's ``tmp_path``. Each daemon started stops when the test ends."""
    async with AsyncExitStack() as stack:

        async def start(
            plugins: Mapping[str, object] | None = None, **options: Any
        ) -> RunningDaemon:
            options.setdefault("directory", tmp_path)
            return await stack.enter_async_context(run_daemon(plugins, **options))

        yield start


try:  # pytest-asyncio's own decorator makes the fixture work in its strict mode too
    import pytest_asyncio

    frameiod_daemon = pytest_asyncio.fixture(_frameiod_daemon, name="frameiod_daemon")
except ImportError:  # pragma: no cover - without pytest-asyncio, async fixtures cannot run
    frameiod_daemon = pytest.fixture(_frameiod_daemon, name="frameiod_daemon")
