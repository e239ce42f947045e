"""The notify plugin, driven through a real daemon (`frameiod_daemon`) that posts to a real
Slack-compatible receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import frameiod_notify
import httpx
import pytest
from aiohttp import web
from frameiod_notify import DEFAULT_TEMPLATE, PLACEHOLDERS, app
from structlog.testing import capture_logs

from frameiod.config import ConfigError
from frameiod.testing import run_daemon

# Fixed ids, so the rendered text can be spelled out in full.
IDS: dict[str, Any] = {
    "account": {"id": "acc-1"},
    "workspace": {"id": "ws-1"},
    "project": {"id": "prj-1"},
    "user": {"id": "usr-1"},
    "resource": {"id": "cmt-1", "type": "comment"},
}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_port: int


class Receiver:
    """An incoming webhook on 127.0.0.1 that records every request and answers ``status``
    with ``answer``; with ``hang`` set it answers only when the test ends."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.answer = "ok"  # what Slack answers on success
        self.hang = False
        self.port = 0
        self.release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            Received(
                method=request.method,
                path=request.path,
                headers=dict(request.headers),
                body=json.loads(raw) if raw else None,
                client_port=peer[1] if peer else 0,
            )
        )
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.status, text=self.answer)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = web.Application()
    server.router.add_route("*", "/{path:.*}", receiver.handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.port = runner.addresses[0][1]
    yield receiver
    receiver.release.set()
    await runner.cleanup()


def settings(webhook_url: str, **keys: str) -> str:
    """A ``[plugins.notify]`` table (JSON strings are valid TOML basic strings)."""
    lines = [
        f"{key} = {json.dumps(value)}"
        for key, value in {"webhook_url": webhook_url, **keys}.items()
    ]
    return "[plugins.notify]\n" + "\n".join(lines) + "\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestNotifications:
    async def test_comment_created_posts_one_json_message_with_every_placeholder_filled(
        self, receiver, frameiod_daemon
    ):
        template = " ".join(f"{name}={{{name}}}" for name in PLACEHOLDERS)
        daemon = await frameiod_daemon(
            {"notify": app}, settings=settings(receiver.url, template=template)
        )

        sent = await daemon.send("comment.created", **IDS)

        assert [o.status for o in sent.outcomes] == ["ok"]
        [request] = receiver.requests
        assert (request.method, request.path) == ("POST", "/hook")
        assert request.headers["Content-Type"] == "application/json"
        assert request.body == {
            "text": f"event_type=comment.created event_id={sent.id} resource_id=cmt-1 "
            "resource_type=comment account_id=acc-1 workspace_id=ws-1 project_id=prj-1 "
            "user_id=usr-1"
        }

    async def test_comment_updated_posts_the_default_template(self, receiver, frameiod_daemon):
        daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))

        sent = await daemon.send("comment.updated", **IDS)

        assert [o.status for o in sent.outcomes] == ["ok"]
        assert [r.body for r in receiver.requests] == [
            {"text": "comment.updated on comment cmt-1 by user usr-1 in project prj-1"}
        ]

    async def test_an_id_the_event_does_not_carry_reads_unknown(self, receiver, frameiod_daemon):
        daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))
        body = {"type": "comment.created", "resource": {"id": "c1", "type": "comment"}}

        status, answer = await daemon.post(json.dumps(body).encode())
        outcomes = await daemon.daemon.dispatcher.wait_for(answer["id"])

        assert (status, [o.status for o in outcomes]) == (202, ["ok"])
        assert [r.body for r in receiver.requests] == [
            {"text": "comment.created on comment c1 by user unknown in project unknown"}
        ]

    async def test_other_event_types_post_nothing(self, receiver, frameiod_daemon):
        daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))

        ignored = await daemon.send("file.ready", **IDS)

        assert ignored.status == 202
        assert ignored.outcomes == []
        assert receiver.requests == []
        # The same daemon does post for a comment, so the silence above was the filter.
        await daemon.send("comment.created", **IDS)
        assert len(receiver.requests) == 1

    async def test_notifications_share_one_client_that_is_closed_at_shutdown(
        self, receiver, tmp_path
    ):
        async with run_daemon(
            {"notify": app}, settings=settings(receiver.url), directory=tmp_path
        ) as daemon:
            client = frameiod_notify._state.client
            await daemon.send("comment.created", **IDS)
            await daemon.send("comment.updated", **IDS)
            assert isinstance(client, httpx.AsyncClient)
            assert not client.is_closed

        # One kept-alive connection carried both posts.
        assert [r.client_port for r in receiver.requests] == [receiver.requests[0].client_port] * 2
        assert client.is_closed
        assert frameiod_notify._state.client is None

    async def test_each_notification_logs_one_line_without_the_url(self, receiver, frameiod_daemon):
        with capture_logs() as logs:
            daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))
            sent = await daemon.send("comment.created", **IDS)

        [line] = [entry for entry in logs if entry["event"] == "notification sent"]
        assert line["plugin"] == "notify"
        assert line["log_level"] == "info"
        assert (line["event_id"], line["event_type"], line["resource_id"]) == (
            sent.id,
            "comment.created",
            "cmt-1",
        )
        assert line["status"] == 200
        assert receiver.url not in repr(logs)


class TestFailures:
    """A post that is not taken raises, so frameiod records an error; the URL is never shown."""

    async def test_a_500_is_an_error_naming_the_status_not_the_url(self, receiver, frameiod_daemon):
        receiver.status, receiver.answer = 500, "invalid_payload"
        with capture_logs() as logs:
            daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))
            sent = await daemon.send("comment.created", **IDS)

        [outcome] = sent.outcomes
        assert outcome.status == "error"
        assert outcome.error == (
            "NotifyError: the webhook answered 500 Internal Server Error: invalid_payload"
        )
        assert len(receiver.requests) == 1
        [failed] = [entry for entry in logs if entry["event"] == "handler failed"]
        shown = repr(logs) + "".join(traceback.format_exception(failed["exc_info"]))
        assert "/hook" not in shown
        assert not any(entry["event"] == "notification sent" for entry in logs)

    async def test_an_answer_that_echoes_the_url_is_shown_redacted(self, receiver, frameiod_daemon):
        daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))
        receiver.status, receiver.answer = 404, f"no route for POST {receiver.url}"

        sent = await daemon.send("comment.created", **IDS)

        [outcome] = sent.outcomes
        assert outcome.status == "error"
        assert outcome.error == (
            "NotifyError: the webhook answered 404 Not Found: no route for POST <webhook_url>"
        )

    async def test_an_unreachable_webhook_is_an_error_without_the_url(self, frameiod_daemon):
        url = f"http://127.0.0.1:{closed_port()}/services/T0/B0/token"
        with capture_logs() as logs:
            daemon = await frameiod_daemon({"notify": app}, settings=settings(url))
            sent = await daemon.send("comment.created", **IDS)

        [outcome] = sent.outcomes
        assert outcome.status == "error"
        assert outcome.error.startswith(
            "NotifyError: the webhook could not be reached: ConnectError"
        )
        [failed] = [entry for entry in logs if entry["event"] == "handler failed"]
        shown = repr(logs) + "".join(traceback.format_exception(failed["exc_info"]))
        assert "/services/T0/B0/token" not in shown

    async def test_no_answer_within_the_timeout_is_an_error(self, receiver, frameiod_daemon):
        receiver.hang = True
        daemon = await frameiod_daemon(
            {"notify": app}, settings=settings(receiver.url, timeout="100ms")
        )

        sent = await daemon.send("comment.created", **IDS)

        [outcome] = sent.outcomes
        assert outcome.status == "error"
        assert outcome.error == "NotifyError: the webhook did not answer within 100ms"
        assert outcome.seconds < 5


class TestConfig:
    async def test_the_validated_config_has_the_defaults_and_never_shows_the_url(
        self, receiver, frameiod_daemon
    ):
        daemon = await frameiod_daemon({"notify": app}, settings=settings(receiver.url))

        config = daemon.daemon.plugins.plugins["notify"].config
        assert config is app.config
        assert config.webhook_url.reveal() == receiver.url
        assert (config.template, config.timeout) == (DEFAULT_TEMPLATE, 10.0)
        for shown in (repr(config), str(config), repr(config.model_dump())):
            assert receiver.url not in shown
            assert "/hook" not in shown

    @pytest.mark.parametrize(
        ("template", "problem"),
        [
            ("{event_type} by {user}", "unknown placeholder {user} (did you mean {user_id}?)"),
            ("{event_type.__class__}", "unknown placeholder {event_type.__class__}"),
            ("{0} on {resource_id}", "unknown placeholder {0}; the placeholders are {event_type}"),
            ("{} on {resource_id}", "unknown placeholder {}; the placeholders are {event_type}"),
            ("{user_id:>{width}}", "unknown placeholder {width}"),
            ("{event_type", "not a valid template (expected '}' before end of string)"),
            ("{user_id:d}", "not a valid template (Unknown format code 'd'"),
            ("  ", "the template is empty"),
        ],
    )
    async def test_a_template_that_cannot_render_is_a_config_error(
        self, frameiod_daemon, tmp_path, template, problem
    ):
        url = "https://hooks.example.com/services/T0/B0/token"
        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon({"notify": app}, settings=settings(url, template=template))

        [line] = caught.value.problems
        assert line.startswith(f"{tmp_path / 'config.toml'}: plugins.notify.template: {problem}")

    @pytest.mark.parametrize(
        "table", ["", '[plugins.notify]\ntemplate = "{event_type}"\n'], ids=["no-table", "no-key"]
    )
    async def test_a_missing_webhook_url_is_a_config_error(self, frameiod_daemon, tmp_path, table):
        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon({"notify": app}, settings=table)

        assert caught.value.problems == [
            f"{tmp_path / 'config.toml'}: plugins.notify.webhook_url: required key is missing"
        ]

    @pytest.mark.parametrize(
        "value", ["hooks.slack.com/services/T0/B0/token", "ftp://h/services/T0/B0/token"]
    )
    async def test_a_webhook_url_that_is_not_http_is_an_error_that_does_not_show_it(
        self, frameiod_daemon, tmp_path, value
    ):
        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon({"notify": app}, settings=settings(value))

        assert caught.value.problems == [
            f"{tmp_path / 'config.toml'}: plugins.notify.webhook_url: expected an http:// or "
            "https:// URL; the value is a secret and not shown"
        ]

    def test_the_readme_documents_every_placeholder_and_the_defaults(self):
        readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")

        for name in PLACEHOLDERS:
            assert f"| `{{{name}}}` |" in readme
        assert f'| `template` | `"{DEFAULT_TEMPLATE}"` |' in readme
        assert '| `timeout` | `"10s"` |' in readme

    async def test_every_other_mistake_is_reported_at_once(self, frameiod_daemon, tmp_path):
        table = settings("https://hooks.example.com/x", timeout="soon", templte="{event_type}")

        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon({"notify": app}, settings=table)

        path = tmp_path / "config.toml"
        assert sorted(caught.value.problems) == [
            f'{path}: plugins.notify.templte: unknown key (did you mean "template"?)',
            f'{path}: plugins.notify.timeout: expected a duration like "30s" or "5m" '
            '(units ms, s, m, h), got "soon"',
        ]
