"""``frameiod webhooks`` and ``frameiod actions``: the real CLI, through the real SDK, against
a local server that answers like Frame.io's API; the printed config checked by a real daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import SECRET, install_plugin, run_cli, write_config

from frameiod import ActionEvent, App, Message
from frameiod.cli.event_patterns import expand_events
from frameiod.events import EVENT_TYPES
from frameiod.testing import run_daemon

ACCOUNT, WORKSPACE, TOKEN = "acc-1", "ws-1", "t"
HOOK_URL = "https://hooks.example.com/webhooks/hooks"
ACTION_URL = "https://hooks.example.com/actions/hooks"
STAMP = "2026-01-02T03:04:05Z"


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"detail": detail}]}, status=status, headers=headers)


class FakeFrameio:
    """Frame.io's webhook and custom-action endpoints, at the paths the SDK calls, with
    ``{"data": ...}`` bodies; it checks the bearer token and the shape of request bodies."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, str, Any]] = []  # method, path with query, JSON body
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.actions: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, str] = {}
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.page_size = 2
        self._count = 0

    def next_id(self) -> str:
        return f"00000000-0000-4000-8000-{self._count + 1:012d}"

    def seen(self, method: str) -> list[tuple[str, Any]]:
        return [(path, body) for m, path, body in self.requests if m == method]

    @web.middleware
    async def check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(401, "invalid token")
        if self.fail_next:
            status, headers = self.fail_next.pop(0)
            return _error(status, f"failed with {status}", headers)
        if request.match_info.get("account") != ACCOUNT:
            return _error(404, "no such account")
        if request.match_info.get("workspace", WORKSPACE) != WORKSPACE:
            return _error(404, "no such workspace")
        if request.method in ("POST", "PATCH") and (
            not isinstance(body, dict)
            or set(body) != {"data"}
            or not isinstance(body["data"], dict)
        ):
            return _error(422, 'the body must be {"data": {...}}')
        return await handler(request)

    def _new(self, data: dict[str, Any], store: dict[str, dict[str, Any]]) -> web.Response:
        self._count += 1
        identifier = f"00000000-0000-4000-8000-{self._count:012d}"
        secret = f"frameio-secret-{self._count}-0123456789abcdef"
        item = {
            "id": identifier,
            "active": True,
            "workspace_id": WORKSPACE,
            "created_at": STAMP,
            "updated_at": STAMP,
            **data,
        }
        store[identifier] = item
        self.secrets[identifier] = secret
        return web.json_response({"data": {**item, "secret": secret}}, status=201)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        start = int(request.query.get("after", "0"))
        end = start + self.page_size
        following = f"{request.path}?after={end}" if end < len(items) else None
        return web.json_response(
            {"data": items[start:end], "links": {"next": following}, "total_count": len(items)}
        )

    def _find(self, request: web.Request, store: dict[str, dict[str, Any]]) -> dict | None:
        return store.get(request.match_info["id"])

    # webhooks

    async def create_webhook(self, request: web.Request) -> web.Response:
        data = (await request.json())["data"]
        if set(data) != {"name", "url", "events"} or not data["events"]:
            return _error(422, f"unexpected webhook fields {sorted(data)}")
        if not set(data["events"]) <= set(EVENT_TYPES):
            return _error(422, "unknown event")
        return self._new(data, self.webhooks)

    async def list_webhooks(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.webhooks.values()))

    async def webhook(self, request: web.Request) -> web.Response:
        item = self._find(request, self.webhooks)
        if item is None:
            return _error(404, "no such webhook")
        if request.method == "DELETE":
            del self.webhooks[item["id"]]
            return web.Response(status=204)
        if request.method == "PATCH":
            data = (await request.json())["data"]
            if not data or not set(data) <= {"name", "url", "events", "active"}:
                return _error(422, f"unexpected webhook fields {sorted(data)}")
            item.update(data)
        return web.json_response({"data": item})

    # custom actions

    async def create_action(self, request: web.Request) -> web.Response:
        data = (await request.json())["data"]
        required = {"name", "description", "event", "url"}
        if not required <= set(data) <= required | {"timeout", "multi_asset"}:
            return _error(422, f"unexpected action fields {sorted(data)}")
        return self._new({"creator_id": "u-1", "timeout": None, **data}, self.actions)

    async def list_actions(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.actions.values()))

    async def action(self, request: web.Request) -> web.Response:
        item = self._find(request, self.actions)
        if item is None:
            return _error(404, "no such action")
        if request.method == "DELETE":
            del self.actions[item["id"]]
            return web.Response(status=204)
        if request.method == "PATCH":
            data = (await request.json())["data"]
            fields = {"active", "description", "event", "multi_asset", "name", "timeout", "url"}
            if not data or not set(data) <= fields:
                return _error(422, f"unexpected action fields {sorted(data)}")
            item.update(data)
        return web.json_response({"data": item})


@pytest.fixture
async def frameio() -> AsyncIterator[FakeFrameio]:
    fake = FakeFrameio()
    app = web.Application(middlewares=[fake.check])
    workspace = "/v4/accounts/{account}/workspaces/{workspace}"
    app.router.add_post(f"{workspace}/webhooks", fake.create_webhook)
    app.router.add_get(f"{workspace}/webhooks", fake.list_webhooks)
    app.router.add_route("*", "/v4/accounts/{account}/webhooks/{id}", fake.webhook)
    app.router.add_post(f"{workspace}/actions", fake.create_action)
    app.router.add_get(f"{workspace}/actions", fake.list_actions)
    app.router.add_route("*", "/v4/accounts/{account}/actions/{id}", fake.action)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


def configure(folder: Path, fake: FakeFrameio, *, token: str = TOKEN, extra: str = "") -> Path:
    """A config with the test source ``default`` and ``[frameio]`` pointing at ``fake``."""
    return write_config(
        folder,
        f"""
[server]
host = "127.0.0.1"
port = 0

[log]
format = "json"

[sources.default]
secrets = ["{SECRET}"]

[frameio]
token = "{token}"
base_url = "{fake.url}"
{extra}""",
    )


async def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``frameiod ARGS --config CONFIG`` in a subprocess, while the fake API runs here."""
    # No $STATE_DIRECTORY: the secrets go next to the config, where the daemon looks.
    env = {"STATE_DIRECTORY": "", **(env or {})}
    return await asyncio.to_thread(run_cli, *args, "--config", str(config), env=env)


def create_webhook(
    config: Path, *more: str, url: str = HOOK_URL, env: dict[str, str] | None = None
) -> Any:
    return cli(
        config,
        *("webhooks", "create", "--account", ACCOUNT, "--workspace", WORKSPACE),
        *("--url", url, *more),
        env=env,
    )


def printed_table(stdout: str) -> str:
    """The ``[sources.NAME]`` table the command printed, ready to paste."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("[sources."))
    return "\n".join(lines[start : lines.index("]", start) + 1]) + "\n"


def secret_files(folder: Path) -> list[Path]:
    return sorted((folder / "secrets").glob("*")) if (folder / "secrets").is_dir() else []


PLUGIN = """
from frameiod import App, Message

app = App()


@app.on_webhook("file.ready", source="hooks")
async def on_ready(event):
    pass


@app.on_webhook("comment.*", source="hooks")
async def on_comment(event):
    pass


@app.on_webhook("share.*", source="elsewhere")
async def on_share(event):
    pass


@app.on_action(
    "acme.transcode", name="Transcode", description="Transcode this file", source="hooks"
)
async def transcode(event):
    return Message("Queued")
"""


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """The environment that loads `PLUGIN` as the installed plugin ``acme``."""
    return {**install_plugin(tmp_path / "site", "acme", PLUGIN), "FRAMEIOD_PLUGINS": "acme"}


class TestWebhooksCreate:
    async def test_the_secret_is_saved_0600_and_the_printed_table_works_in_a_daemon(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 0, done.stderr
        (identifier,) = frameio.webhooks
        assert frameio.seen("POST") == [
            (
                f"/v4/accounts/{ACCOUNT}/workspaces/{WORKSPACE}/webhooks",
                {"data": {"name": "frameiod hooks", "url": HOOK_URL, "events": ["file.ready"]}},
            )
        ]
        secret = frameio.secrets[identifier]
        path = tmp_path / "secrets" / f"webhook-{identifier}.secret"
        assert path.read_text() == secret + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert secret not in done.stdout + done.stderr
        table = printed_table(done.stdout)
        assert f'"file:secrets/webhook-{identifier}.secret"' in table
        assert "systemctl reload frameiod" in done.stdout

        async with run_daemon(
            config_text=config.read_text() + table, directory=tmp_path, environ={}
        ) as daemon:
            signed = await daemon.send("file.ready", source="hooks", secret=secret, wait=False)
            forged = await daemon.send("file.ready", source="hooks", secret=SECRET, wait=False)
        assert (signed.status, forged.status) == (202, 401)

    async def test_show_secret_prints_it(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, "--events", "file.ready", "--show-secret")
        assert done.returncode == 0, done.stderr
        (secret,) = frameio.secrets.values()
        assert f"secret  {secret}" in done.stdout
        assert len(secret_files(tmp_path)) == 1  # saved all the same

    async def test_the_default_events_are_what_the_plugins_handle_on_the_source(
        self, tmp_path: Path, frameio: FakeFrameio, plugin_env: dict[str, str]
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, env=plugin_env)
        assert done.returncode == 0, done.stderr
        ((_, body),) = frameio.seen("POST")
        comments = [name for name in EVENT_TYPES if name.startswith("comment.")]
        # Not share.*: that handler listens on another source.
        assert body["data"]["events"] == ["file.ready", *comments]
        assert "file.ready, comment.* (6 events): what acme:on_ready, acme:on_comment handle" in (
            done.stdout
        )

    async def test_without_events_or_handlers_it_asks_for_events(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config)
        assert done.returncode == 2
        assert done.stderr.strip() == (
            "no loaded plugin handles events on source 'hooks': name the events with --events,"
            " e.g. --events file.ready,comment.*"
        )
        assert frameio.requests == []

    @pytest.mark.parametrize(
        ("patterns", "expected"),
        [
            ("comment.*", [n for n in EVENT_TYPES if n.startswith("comment.")]),
            ("file.ready, comment.created,file.ready", ["file.ready", "comment.created"]),
            ("*", list(EVENT_TYPES)),
        ],
    )
    async def test_event_patterns_expand_against_the_catalogue(
        self, tmp_path: Path, frameio: FakeFrameio, patterns: str, expected: list[str]
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, "--events", patterns)
        assert done.returncode == 0, done.stderr
        ((_, body),) = frameio.seen("POST")
        assert body["data"]["events"] == expected

    def test_comment_star_is_the_five_comment_types(self):
        assert expand_events("comment.*") == [
            "comment.created",
            "comment.updated",
            "comment.deleted",
            "comment.completed",
            "comment.uncompleted",
        ]

    @pytest.mark.parametrize(
        ("pattern", "message"),
        [
            ("file.redy", "--events: 'file.redy' is not a Frame.io event type"
             " (did you mean 'file.ready'?)"),
            ("asset.*", "--events: no Frame.io event type starts with 'asset.'"),
        ],
    )  # fmt: skip
    async def test_an_unknown_pattern_is_refused_by_name(
        self, tmp_path: Path, frameio: FakeFrameio, pattern: str, message: str
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, "--events", f"file.ready,{pattern}")
        assert (done.returncode, done.stderr.strip()) == (2, message)
        assert frameio.requests == []

    async def test_secret_file_puts_the_secret_there_and_refers_to_it_absolutely(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        target = tmp_path / "elsewhere" / "hook.secret"
        target.parent.mkdir()
        done = await create_webhook(config, "--events", "file.ready", "--secret-file", str(target))
        assert done.returncode == 0, done.stderr
        assert target.read_text() == next(iter(frameio.secrets.values())) + "\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert f'"file:{target}"' in printed_table(done.stdout)
        assert secret_files(tmp_path) == []

    async def test_an_existing_secret_file_is_refused_before_calling_frameio(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        target = tmp_path / "hook.secret"
        target.write_text("keep me")
        done = await create_webhook(config, "--events", "file.ready", "--secret-file", str(target))
        assert done.returncode == 2
        assert "already exists" in done.stderr
        assert target.read_text() == "keep me"
        assert frameio.requests == []

    async def test_for_a_configured_source_the_table_keeps_its_secrets(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        url = "https://hooks.example.com/webhooks/default"
        done = await create_webhook(config, "--events", "file.ready", url=url)
        assert done.returncode == 0, done.stderr
        table = printed_table(done.stdout)
        # The literal secret in the config is never printed, but the user is told to keep it.
        assert SECRET not in done.stdout
        assert "keep it here" in table
        assert "set the secrets of [sources.default]" in done.stdout

    async def test_a_url_for_another_source_gets_a_warning(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await create_webhook(config, "--events", "file.ready", "--source", "other")
        assert done.returncode == 0, done.stderr
        assert "delivers to source 'hooks', not to 'other'" in done.stderr
        assert printed_table(done.stdout).startswith("[sources.other]\n")

    @pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give files away"
    )
    async def test_run_as_root_the_secret_belongs_to_the_state_folders_owner(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        """So the service's own user (systemd's DynamicUser) can read what root wrote."""
        config = configure(tmp_path, frameio)
        os.chown(tmp_path, 4321, 4321)
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 0, done.stderr
        (path,) = secret_files(tmp_path)
        folder = path.parent.stat()
        assert (folder.st_uid, folder.st_gid, stat.S_IMODE(folder.st_mode)) == (4321, 4321, 0o700)
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (4321, 0o600)

    async def test_without_credentials_it_asks_for_a_token(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = write_config(tmp_path)  # no [frameio]
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 2
        assert "set [frameio] token" in done.stderr
        assert frameio.requests == []


class TestNothingHalfWritten:
    async def test_a_secret_that_cannot_be_saved_deletes_the_new_webhook(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        # A file already where this webhook's secret goes: never overwritten.
        (tmp_path / "secrets").mkdir()
        identifier = frameio.next_id()
        taken = tmp_path / "secrets" / f"webhook-{identifier}.secret"
        taken.write_text("someone else's")
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"cannot save the secret to {taken}: File exists; ")
        assert line.endswith(f"the new webhook {identifier} was deleted again, nothing was changed")
        assert frameio.seen("DELETE") == [(f"/v4/accounts/{ACCOUNT}/webhooks/{identifier}", None)]
        assert frameio.webhooks == {}
        assert taken.read_text() == "someone else's"
        assert secret_files(tmp_path) == [taken]

    async def test_an_unusable_secrets_folder_deletes_the_new_webhook(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        (tmp_path / "secrets").write_text("a file, not a folder")
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 1
        assert "was deleted again" in done.stderr
        assert len(frameio.seen("DELETE")) == 1
        assert frameio.webhooks == {}

    async def test_a_failed_api_call_leaves_no_secret_file(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        frameio.fail_next = [(403, {})]
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 1
        assert not (tmp_path / "secrets").exists()
        assert frameio.seen("DELETE") == []


class TestApiErrors:
    @pytest.mark.parametrize(
        ("status", "headers", "message"),
        [
            (401, {}, "the API token was refused (401): check [frameio] token"),
            (403, {}, "not allowed (403): creating webhooks needs an account admin"),
            (404, {}, "not found (404): check the account/workspace id"),
            (
                429,
                {"Retry-After": "42"},
                "rate limited by Frame.io (webhook creation: 10 per minute); retry in 42 s",
            ),
            (500, {}, "Frame.io answered 500 when creating the webhook: failed with 500"),
        ],
    )
    async def test_each_error_is_one_line_and_exit_status_1(
        self,
        tmp_path: Path,
        frameio: FakeFrameio,
        status: int,
        headers: dict[str, str],
        message: str,
    ):
        config = configure(tmp_path, frameio)
        frameio.fail_next = [(status, headers)]
        done = await create_webhook(config, "--events", "file.ready")
        assert (done.returncode, done.stderr, done.stdout) == (1, message + "\n", "")

    async def test_a_refused_token_says_which_setting(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio, token="wrong")
        done = await cli(config, "webhooks", "list", "--account", ACCOUNT, "--workspace", WORKSPACE)
        assert (done.returncode, done.stderr) == (
            1,
            "the API token was refused (401): check [frameio] token\n",
        )

    async def test_an_unknown_workspace_is_not_found(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        done = await cli(config, "webhooks", "list", "--account", ACCOUNT, "--workspace", "nope")
        assert (done.returncode, done.stderr) == (
            1,
            "not found (404): check the account/workspace id\n",
        )

    async def test_an_unreachable_api_names_the_base_url(self, tmp_path: Path):
        with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        closed = FakeFrameio()
        closed.url = f"http://127.0.0.1:{port}"
        config = configure(tmp_path, closed)
        done = await create_webhook(config, "--events", "file.ready")
        assert done.returncode == 1
        assert done.stderr.startswith(f"cannot reach Frame.io at {closed.url}: ")
        assert len(done.stderr.splitlines()) == 1
        assert secret_files(tmp_path) == []


class TestWebhooksListUpdateDelete:
    async def _three(self, config: Path) -> None:
        for events in ("file.ready", "comment.*", "*"):
            assert (await create_webhook(config, "--events", events)).returncode == 0

    async def test_list_prints_every_page(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        await self._three(config)
        done = await cli(config, "webhooks", "list", "--account", ACCOUNT, "--workspace", WORKSPACE)
        assert done.returncode == 0, done.stderr
        for identifier in frameio.webhooks:
            assert identifier in done.stdout
        assert "comment.* (5 events)" in done.stdout
        assert "* (all 30 events)" in done.stdout
        assert "  hooks  " in done.stdout  # the source its URL delivers to
        # Three webhooks, two per page: the second page came through the cursor.
        assert [path for path, _ in frameio.seen("GET")][-2:] == [
            f"/v4/accounts/{ACCOUNT}/workspaces/{WORKSPACE}/webhooks",
            f"/v4/accounts/{ACCOUNT}/workspaces/{WORKSPACE}/webhooks?after=2",
        ]

    async def test_list_json(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        await self._three(config)
        done = await cli(
            config, "webhooks", "list", "--account", ACCOUNT, "--workspace", WORKSPACE, "--json"
        )
        listed = json.loads(done.stdout)
        assert [item["id"] for item in listed] == list(frameio.webhooks)
        assert listed[0]["events"] == ["file.ready"]
        assert listed[0]["url"] == HOOK_URL
        assert all("secret" not in item for item in listed)

    async def test_update_sends_only_what_changes(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        await create_webhook(config, "--events", "file.ready")
        (identifier,) = frameio.webhooks
        done = await cli(
            config,
            *("webhooks", "update", "--account", ACCOUNT, identifier),
            *("--events", "comment.*", "--active", "false"),
        )
        assert done.returncode == 0, done.stderr
        comments = [name for name in EVENT_TYPES if name.startswith("comment.")]
        assert frameio.seen("PATCH") == [
            (
                f"/v4/accounts/{ACCOUNT}/webhooks/{identifier}",
                {"data": {"events": comments, "active": False}},
            )
        ]
        assert f'updated webhook {identifier} "frameiod hooks" (inactive)' in done.stdout
        assert "comment.* (5 events)" in done.stdout

    async def test_update_with_nothing_to_change_is_refused(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await cli(config, "webhooks", "update", "--account", ACCOUNT, "some-id")
        assert done.returncode == 2
        assert "nothing to change" in done.stderr
        assert frameio.requests == []

    async def test_delete_removes_it_and_says_which_secret_to_drop(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        created = await create_webhook(config, "--events", "file.ready")
        (identifier,) = frameio.webhooks
        config.write_text(config.read_text() + printed_table(created.stdout))
        done = await cli(config, "webhooks", "delete", "--account", ACCOUNT, identifier)
        assert done.returncode == 0, done.stderr
        assert frameio.seen("DELETE") == [(f"/v4/accounts/{ACCOUNT}/webhooks/{identifier}", None)]
        assert frameio.webhooks == {}
        assert f'Remove "file:secrets/webhook-{identifier}.secret" from the secrets of ' in (
            done.stdout
        )
        # Kept until the config no longer names it: a reload would fail without it.
        assert secret_files(tmp_path) != []

    async def test_deleting_an_unknown_webhook_is_not_found(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await cli(config, "webhooks", "delete", "--account", ACCOUNT, "missing")
        assert (done.returncode, done.stderr) == (
            1,
            "not found (404): check the account/webhook id\n",
        )


class TestRotate:
    async def test_both_secrets_are_accepted_until_the_old_webhook_is_deleted(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        base = config.read_text()
        created = await create_webhook(config, "--events", "file.ready,comment.*", "--name", "N")
        assert created.returncode == 0, created.stderr
        config.write_text(base + printed_table(created.stdout))
        (old,) = frameio.webhooks

        rotated = await cli(
            config, "webhooks", "rotate", "--account", ACCOUNT, "--workspace", WORKSPACE, old
        )
        assert rotated.returncode == 0, rotated.stderr
        new = next(identifier for identifier in frameio.webhooks if identifier != old)
        assert {
            k: v for k, v in frameio.webhooks[new].items() if k in ("name", "url", "events")
        } == {k: v for k, v in frameio.webhooks[old].items() if k in ("name", "url", "events")}
        table = printed_table(rotated.stdout)
        old_ref = f'"file:secrets/webhook-{old}.secret"'
        new_ref = f'"file:secrets/webhook-{new}.secret"'
        assert table.index(old_ref) < table.index(new_ref)
        assert "systemctl reload frameiod" in rotated.stdout
        assert frameio.secrets[new] not in rotated.stdout

        config.write_text(base + table)
        async with run_daemon(config_text=config.read_text(), directory=tmp_path, environ={}) as d:
            statuses = [
                (await d.send("file.ready", source="hooks", secret=s, wait=False)).status
                for s in (frameio.secrets[old], frameio.secrets[new], "not-a-secret")
            ]
        assert statuses == [202, 202, 401]

        # The delete command it printed works as printed.
        (line,) = [line for line in rotated.stdout.splitlines() if "webhooks delete" in line]
        command = shlex.split(line.split(". ", 1)[1])
        assert command[:6] == ["frameiod", "webhooks", "delete", "--account", ACCOUNT, old]
        deleted = await asyncio.to_thread(run_cli, *command[1:])
        assert deleted.returncode == 0, deleted.stderr
        assert list(frameio.webhooks) == [new]
        assert f"remove {old_ref} from [sources.hooks]" in rotated.stdout

    async def test_rotating_into_another_workspace_is_refused(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        await create_webhook(config, "--events", "file.ready")
        (old,) = frameio.webhooks
        done = await cli(
            config, "webhooks", "rotate", "--account", ACCOUNT, "--workspace", "ws-2", old
        )
        assert done.returncode == 2
        assert f"webhook {old} is in workspace {WORKSPACE}, not ws-2" in done.stderr
        assert list(frameio.webhooks) == [old]


def transcoder() -> App:
    app = App()

    @app.on_action("acme.transcode", source="hooks")
    async def transcode(event: ActionEvent) -> Message:
        return Message("Queued", event.resource_id)

    return app


class TestActions:
    def create(self, config: Path, *more: str, env: dict[str, str] | None = None) -> Any:
        return cli(
            config,
            *("actions", "create", "--account", ACCOUNT, "--workspace", WORKSPACE),
            *("--event", "acme.transcode", "--url", ACTION_URL, *more),
            env=env,
        )

    async def test_create_names_the_handler_and_the_table_works_in_a_daemon(
        self, tmp_path: Path, frameio: FakeFrameio, plugin_env: dict[str, str]
    ):
        config = configure(tmp_path, frameio)
        done = await self.create(config, "--timeout", "30", env=plugin_env)
        assert done.returncode == 0, done.stderr
        (identifier,) = frameio.actions
        # Name and description come from the plugin's @app.on_action.
        assert frameio.seen("POST") == [
            (
                f"/v4/accounts/{ACCOUNT}/workspaces/{WORKSPACE}/actions",
                {
                    "data": {
                        "name": "Transcode",
                        "description": "Transcode this file",
                        "event": "acme.transcode",
                        "url": ACTION_URL,
                        "timeout": 30,
                    }
                },
            )
        ]
        assert "handler transcode() in plugin acme (@app.on_action('acme.transcode'))" in (
            done.stdout
        )
        path = tmp_path / "secrets" / f"action-{identifier}.secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = frameio.secrets[identifier]
        assert secret not in done.stdout + done.stderr

        text = config.read_text() + printed_table(done.stdout)
        async with run_daemon(
            {"acme": transcoder()}, config_text=text, directory=tmp_path, environ={}
        ) as daemon:
            status, answer = await daemon.act(
                "acme.transcode", source="hooks", secret=secret, resource={"id": "f1"}
            )
        assert (status, answer) == (200, {"title": "Queued", "description": "f1"})

    async def test_without_a_loaded_handler_it_warns(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        done = await self.create(config, "--name", "Transcode", "--description", "Transcode it")
        assert done.returncode == 0, done.stderr
        assert (
            "warning: no loaded plugin handles custom action 'acme.transcode' on source 'hooks'"
            in done.stderr
        )
        assert "handler " not in done.stdout

    async def test_name_and_description_are_needed_without_a_handler(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        done = await self.create(config)
        assert done.returncode == 2
        assert "give --name and --description" in done.stderr
        assert frameio.requests == []

    async def test_a_secret_that_cannot_be_saved_deletes_the_new_action(
        self, tmp_path: Path, frameio: FakeFrameio
    ):
        config = configure(tmp_path, frameio)
        (tmp_path / "secrets").write_text("not a folder")
        identifier = frameio.next_id()
        done = await self.create(config, "--name", "T", "--description", "D")
        assert done.returncode == 1
        assert "the new custom action" in done.stderr
        assert "was deleted again" in done.stderr
        assert [path for path, _ in frameio.seen("DELETE")] == [
            f"/v4/accounts/{ACCOUNT}/actions/{identifier}"
        ]
        assert frameio.actions == {}

    async def test_rate_limited_creation(self, tmp_path: Path, frameio: FakeFrameio):
        config = configure(tmp_path, frameio)
        frameio.fail_next = [(429, {"Retry-After": "7"})]
        done = await self.create(config, "--name", "T", "--description", "D")
        assert (done.returncode, done.stderr) == (
            1,
            "rate limited by Frame.io (custom action creation: 10 per minute); retry in 7 s\n",
        )

    async def test_list_update_delete(
        self, tmp_path: Path, frameio: FakeFrameio, plugin_env: dict[str, str]
    ):
        config = configure(tmp_path, frameio)
        await self.create(config, env=plugin_env)
        (identifier,) = frameio.actions

        listing = await cli(
            config,
            "actions",
            "list",
            "--account",
            ACCOUNT,
            "--workspace",
            WORKSPACE,
            env=plugin_env,
        )
        assert listing.returncode == 0, listing.stderr
        (row,) = [line for line in listing.stdout.splitlines() if line.startswith(identifier)]
        assert "acme.transcode" in row
        assert "acme:transcode" in row
        listed = await cli(
            config, "actions", "list", "--account", ACCOUNT, "--workspace", WORKSPACE, "--json"
        )
        assert [item["event"] for item in json.loads(listed.stdout)] == ["acme.transcode"]

        updated = await cli(
            config,
            *("actions", "update", "--account", ACCOUNT, identifier),
            *("--event", "acme.other", "--timeout", "60"),
            env=plugin_env,
        )
        assert updated.returncode == 0, updated.stderr
        assert frameio.seen("PATCH") == [
            (
                f"/v4/accounts/{ACCOUNT}/actions/{identifier}",
                {"data": {"event": "acme.other", "timeout": 60}},
            )
        ]
        assert "event acme.other" in updated.stdout
        assert "no loaded plugin handles custom action 'acme.other'" in updated.stderr

        deleted = await cli(config, "actions", "delete", "--account", ACCOUNT, identifier)
        assert deleted.returncode == 0, deleted.stderr
        assert frameio.actions == {}
        assert frameio.seen("DELETE") == [(f"/v4/accounts/{ACCOUNT}/actions/{identifier}", None)]
