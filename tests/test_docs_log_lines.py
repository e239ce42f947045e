"""Every log line the docs quote is one the daemon writes.

The docs' convention: a log line is quoted as one JSON object on one line, inside a
```` ```json ```` fence, with ``"level"`` and ``"event"`` keys, the shape of frameiod's JSON
logs (frameiod/logs.py). Values may be shortened (``"01a21dff-…"``); the event, the level and
every key must be real. A real ``frameiod run`` goes through a scenario that makes the lines
the docs quote: start-up with a plugin, an event handled, a failing handler retried and
dead-lettered, a duplicate, a bad signature, a custom action, a reload and a stop.
"""

from __future__ import annotations

import json
import re
import signal
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    SECRET,
    DaemonProcess,
    event_body,
    install_plugin,
    signed_headers,
    write_config,
)

from frameiod.events import example_action
from frameiod.testing import config_toml

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```json[ \t]*\n(.*?)^```", re.M | re.S)

PLUGIN = textwrap.dedent(
    """
    from frameiod import App, Message

    app = App()

    @app.on_webhook("file.ready")
    async def on_ready(event):
        return None

    @app.on_webhook("comment.created", max_attempts=2)
    async def always_fails(event):
        raise RuntimeError("the handler broke")

    @app.on_action("docs.example")
    async def example(event):
        return Message(title="Done")
    """
)


def quoted_lines(root: Path = ROOT) -> Iterator[tuple[str, int, str]]:
    """Every log line the docs quote: (file, line number, the quoted text)."""
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    for page in pages:
        if "_build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        for fence in FENCE.finditer(text):
            first = text.count("\n", 0, fence.start(1)) + 1
            for offset, line in enumerate(fence[1].splitlines()):
                # A log line, not an API answer or a payload pretty-printed over lines.
                quote = line.strip()
                if quote.startswith("{") and '"event"' in quote and '"level"' in quote:
                    yield page.relative_to(root).as_posix(), first + offset, quote


def test_the_docs_quote_log_lines() -> None:
    """The collector finds the README's quotes (a fence it cannot read would hide them)."""
    found = [where for where, _, _ in quoted_lines()]
    assert "README.md" in found


def test_a_line_the_daemon_does_not_write_is_caught() -> None:
    """The comparison below fails on a made-up event and on a made-up key."""
    written = [{"event": "listening", "level": "info", "port": 1, "timestamp": "t"}]
    assert _problem({"event": "listening", "level": "info", "port": 1}, written) is None
    assert _problem({"event": "event dispatched", "level": "info"}, written)
    assert _problem({"event": "listening", "level": "info", "queued_ms": 1}, written)
    assert _problem({"event": "listening", "level": "warning"}, written)


def _problem(quoted: dict[str, Any], written: list[dict[str, Any]]) -> str | None:
    """Why ``quoted`` is not a line of ``written`` (None when it is one)."""
    same_event = [line for line in written if line.get("event") == quoted.get("event")]
    if not same_event:
        return f"the daemon never wrote an event {quoted.get('event')!r}"
    same_level = [line for line in same_event if line.get("level") == quoted.get("level")]
    if not same_level:
        levels = sorted({str(line.get("level")) for line in same_event})
        return f"its level is {levels}, not {quoted.get('level')!r}"
    keys = set(quoted)
    if any(keys <= set(line) for line in same_level):
        return None
    closest = min(same_level, key=lambda line: len(keys - set(line)))
    return f"the daemon never wrote the keys {sorted(keys - set(closest))} with it"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The JSON lines of a daemon taken through the scenario the docs describe."""
    folder = tmp_path_factory.mktemp("docs_log_lines")
    env = install_plugin(folder / "site", "docs_example", PLUGIN)
    config = write_config(
        folder,
        config_toml(
            secret=SECRET,
            log='format = "json"',
            dispatch='backoff_initial = "10ms"\nbackoff_max = "20ms"',
        ),
    )
    daemon = DaemonProcess(config, env=env, plugins="docs_example")
    try:
        url = daemon.url()
        with httpx.Client(timeout=10) as client:
            body = event_body("file.ready")
            headers = {**signed_headers(body, SECRET), "Content-Type": "application/json"}
            accepted = client.post(url, content=body, headers=headers)
            assert accepted.status_code == 202, accepted.text
            assert client.post(url, content=body, headers=headers).status_code == 200
            daemon.wait_for("handler finished", event_id=accepted.json()["id"])

            failing = event_body("comment.created")
            sent = client.post(
                url,
                content=failing,
                headers={**signed_headers(failing, SECRET), "Content-Type": "application/json"},
            )
            assert sent.status_code == 202, sent.text
            daemon.wait_for("handler gave up", event_id=sent.json()["id"])

            forged = event_body("file.ready", resource={"id": str(uuid.uuid4())})
            refused = client.post(
                url,
                content=forged,
                headers={
                    **signed_headers(forged, "not-the-secret"),
                    "Content-Type": "application/json",
                },
            )
            assert refused.status_code == 401

            action = json.dumps(example_action("docs.example")).encode()
            answered = client.post(
                daemon.url("/actions/default"),
                content=action,
                headers={**signed_headers(action, SECRET), "Content-Type": "application/json"},
            )
            assert answered.status_code == 200, answered.text

        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("config reloaded")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    return list(daemon.lines)


@pytest.mark.parametrize(
    ("where", "number", "text"),
    [pytest.param(*quote, id=f"{quote[0]}:{quote[1]}") for quote in quoted_lines()],
)
def test_each_quoted_line_is_one_the_daemon_writes(
    written: list[dict[str, Any]], where: str, number: int, text: str
) -> None:
    """The quote's event, level and keys are those of a line the daemon wrote."""
    try:
        quoted = json.loads(text)
    except ValueError as exc:
        pytest.fail(f"{where}:{number}: a quoted log line must be one JSON object: {exc}")
    assert isinstance(quoted, dict), f"{where}:{number}: not a JSON object"
    assert {"event", "level"} <= set(quoted), f'{where}:{number}: no "event" or "level" key'
    problem = _problem(quoted, written)
    assert problem is None, (
        f"{where}:{number}: {problem}. Quote a real line, or make "
        "tests/test_docs_log_lines.py's scenario write it"
    )


def test_the_scenario_writes_the_lines_newcomers_see(written: list[dict[str, Any]]) -> None:
    """Start-up, acceptance, success, retry, dead letter and refusal all appear."""
    events = {line.get("event") for line in written}
    wanted = {
        "listening",
        "plugin loaded",
        "webhook accepted",
        "webhook duplicate",
        "handler finished",
        "handler failed",
        "handler gave up",
        "webhook rejected",
        "action handled",
        "config reloaded",
        "stopped",
    }
    assert wanted <= events, sorted(wanted - events)
