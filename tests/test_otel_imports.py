"""With the otel plugin not loaded, frameiod imports nothing of OpenTelemetry, even with
every other feature of the hooks around each call in use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import asyncio, json, sys
from frameiod import App, Middleware, WebhookEvent
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.testing import run_daemon

async def main():
    app = App(middleware=[Middleware()])

    @app.on_webhook("file.ready")
    async def handle(event: WebhookEvent) -> None:
        pass

    async with run_daemon({"app": app}) as daemon:
        sent = await daemon.send("file.ready")
        assert [o.status for o in sent.outcomes] == ["ok"], sent
    # Every installed plugin's entry point, but otel's: as if it were not installed.
    PluginHost(make_plugin_manager(blocked=sys.argv[1:]))
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))

asyncio.run(main())
"""


def imported(blocked: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *blocked],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": ""},
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_without_the_otel_plugin_nothing_of_opentelemetry_is_imported():
    assert imported(["otel"]) == []


def test_with_the_otel_plugin_installed_it_is_imported():
    """The check above can fail: the plugin, loaded, imports OpenTelemetry."""
    pytest.importorskip("frameiod_otel")
    assert "opentelemetry.sdk.trace" in imported([])
