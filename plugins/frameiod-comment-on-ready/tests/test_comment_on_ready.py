"""The comment-on-ready plugin, driven through a real daemon (`frameiod_daemon`) that talks
to a fake Frame.io API on loopback through the real ``frameio`` SDK."""

from __future__ import annotations

import importlib.metadata
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import frameiod_comment_on_ready
import pytest
from aiohttp import web
from frameiod_comment_on_ready import ACTION, DEFAULT_TEXT, CommentOnReadyConfig, app
from structlog.testing import capture_logs

from frameiod.config import ConfigError
from frameiod.testing import RunningDaemon, run_daemon

TOKEN = "test-token"
FILE = {"account": {"id": "acc-1"}, "resource": {"id": "file-1", "type": "file"}}
# What the action's first click answers, as JSON on the wire.
FORM = {
    "title": "Comment",
    "description": "Post a comment on this file.",
    "fields": [{"type": "textarea", "label": "Comment", "name": "text"}],
}
# A custom-action request's fields for file-1 in acc-1 (actions carry a top-level account_id).
ON_FILE: dict[str, Any] = {"account_id": "acc-1", "resource": {"id": "file-1", "type": "file"}}
COMMENTS_PATH = re.compile(r"/v4/accounts/(?P<account>[^/]+)/files/(?P<file>[^/]+)/comments")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    body: Any


class FakeFrameio:
    """Frame.io's comment endpoint on 127.0.0.1: records every request, checks the bearer
    token, the path and the body, and creates comments. ``fail_next`` makes the next N
    requests answer 500; a file id in ``deleted`` answers 404."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.comments: list[dict[str, str]] = []
        self.fail_next = 0
        self.deleted: set[str] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append(
            Request(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                authorization=request.headers.get("Authorization"),
                body=body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(401, "Unauthorized")
        match = COMMENTS_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return self._error(400, f"unexpected request {request.method} {request.path}")
        if (
            not isinstance(body, dict)
            or list(body) != ["data"]
            or not isinstance(body["data"], dict)
            or list(body["data"]) != ["text"]
            or not isinstance(body["data"]["text"], str)
        ):
            return self._error(422, f"expected {{'data': {{'text': ...}}}}, got {body!r}")
        if self.fail_next:
            self.fail_next -= 1
            return self._error(500, "Internal Server Error")
        if match["file"] in self.deleted:
            return self._error(404, "Not Found")
        comment = {
            "id": str(uuid.uuid4()),
            "text": body["data"]["text"],
            "account_id": match["account"],
            "file_id": match["file"],
        }
        self.comments.append(comment)
        return web.json_response({"data": comment})

    @staticmethod
    def _error(status: int, detail: str) -> web.Response:
        return web.json_response({"errors": [{"detail": detail}]}, status=status)


@pytest.fixture
async def api() -> AsyncIterator[FakeFrameio]:
    fake = FakeFrameio()
    server = web.Application()
    server.router.add_route("*", "/{path:.*}", fake.handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.port = runner.addresses[0][1]
    yield fake
    await runner.cleanup()


def settings(
    api: FakeFrameio,
    *,
    token: str = TOKEN,
    table: str = 'text = "Ready!"\n',
    max_attempts: int = 3,
) -> str:
    """``[frameio]`` pointed at the fake API, fast retries, and the plugin's table."""
    return (
        f'[frameio]\ntoken = "{token}"\nbase_url = "{api.base_url}"\n'
        '[dispatch]\nbackoff_initial = "10ms"\nbackoff_max = "50ms"\n'
        f"max_attempts = {max_attempts}\n"
        f"[plugins.comment_on_ready]\n{table}"
    )


async def attempts(daemon: RunningDaemon, event_id: str) -> list[int]:
    """How many times each delivery of the event was attempted."""
    assert daemon.daemon.spool is not None
    return [row["attempts"] for row in await daemon.daemon.spool.deliveries_of(event_id)]


async def ready(daemon: RunningDaemon) -> str:
    """Send file.ready for file-1 in acc-1, without waiting; return frameiod's event id."""
    sent = await daemon.send("file.ready", wait=False, **FILE)
    assert sent.status == 202
    assert sent.id is not None
    return sent.id


class TestFileReady:
    async def test_file_ready_posts_one_comment_with_the_configured_text_and_token(
        self, api, frameiod_daemon
    ):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        event_id = await ready(daemon)
        outcomes = await daemon.wait_for(event_id, settled=True)

        assert [o.status for o in outcomes] == ["ok"]
        [request] = api.requests
        assert (request.method, request.path) == (
            "POST",
            "/v4/accounts/acc-1/files/file-1/comments",
        )
        assert request.authorization == "Bearer test-token"
        assert request.body == {"data": {"text": "Ready!"}}
        assert request.query == {}
        assert [(c["account_id"], c["file_id"], c["text"]) for c in api.comments] == [
            ("acc-1", "file-1", "Ready!")
        ]

    async def test_the_comment_is_logged_with_its_id(self, api, frameiod_daemon):
        with capture_logs() as logs:
            daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
            event_id = await ready(daemon)
            await daemon.wait_for(event_id, settled=True)

        [line] = [entry for entry in logs if entry["event"] == "comment posted"]
        assert line["plugin"] == "comment_on_ready"
        assert (line["event_id"], line["file_id"]) == (event_id, "file-1")
        assert line["comment_id"] == api.comments[0]["id"]

    async def test_without_a_table_the_default_text_is_posted(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api, table=""))

        event_id = await ready(daemon)
        await daemon.wait_for(event_id, settled=True)

        assert [r.body for r in api.requests] == [{"data": {"text": DEFAULT_TEXT}}]

    async def test_other_file_events_post_nothing(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        sent = await daemon.send("file.created", **FILE)

        assert (sent.status, sent.outcomes, api.requests) == (202, [], [])

    async def test_an_event_without_an_account_posts_nothing_and_is_not_retried(
        self, api, frameiod_daemon
    ):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        body = {"type": "file.ready", "resource": {"id": "file-1", "type": "file"}}

        with capture_logs() as logs:
            status, answer = await daemon.post(json.dumps(body).encode())
            outcomes = await daemon.wait_for(answer["id"], settled=True)

        assert (status, [o.status for o in outcomes]) == (202, ["ok"])
        assert api.requests == []
        assert await attempts(daemon, answer["id"]) == [1]
        [line] = [entry for entry in logs if "file_id" in entry]
        assert (line["log_level"], line["file_id"]) == ("error", "file-1")


class TestApiFailures:
    async def test_a_500_is_retried_and_ends_in_exactly_one_comment(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        api.fail_next = 1

        with capture_logs() as logs:
            event_id = await ready(daemon)
            outcomes = await daemon.wait_for(event_id, settled=True)

        assert [o.status for o in outcomes] == ["ok"]
        assert await attempts(daemon, event_id) == [2]
        # Two POSTs (the SDK does not retry on its own), one comment: the 500 created none.
        assert len(api.requests) == 2
        assert [r.body for r in api.requests] == [{"data": {"text": "Ready!"}}] * 2
        assert [c["file_id"] for c in api.comments] == ["file-1"]
        [failed] = [entry for entry in logs if entry["event"] == "handler failed"]
        assert failed["error"].startswith("ApiError: ")
        assert "status_code: 500" in failed["error"]

    async def test_a_deleted_file_is_logged_once_and_not_retried(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        api.deleted.add("file-1")

        with capture_logs() as logs:
            event_id = await ready(daemon)
            outcomes = await daemon.wait_for(event_id, settled=True)

        assert [o.status for o in outcomes] == ["ok"]
        assert await attempts(daemon, event_id) == [1]
        assert len(api.requests) == 1
        assert api.comments == []
        [line] = [entry for entry in logs if "file_id" in entry]
        assert line["log_level"] == "warning"
        assert line["event"].startswith("file not found")
        assert (line["file_id"], line["account_id"], line["event_id"]) == (
            "file-1",
            "acc-1",
            event_id,
        )

    async def test_a_wrong_token_fails_every_attempt_until_the_delivery_is_dead(
        self, api, frameiod_daemon
    ):
        daemon = await frameiod_daemon(
            {"comment_on_ready": app},
            settings=settings(api, token="expired-token", max_attempts=2),
        )

        event_id = await ready(daemon)
        [outcome] = await daemon.wait_for(event_id, settled=True)

        assert outcome.status == "dead"
        assert outcome.error is not None
        assert outcome.error.startswith("UnauthorizedError: ")
        assert await attempts(daemon, event_id) == [2]
        assert [r.authorization for r in api.requests] == ["Bearer expired-token"] * 2
        assert api.comments == []

    async def test_without_api_credentials_the_plugin_fails_at_start_up(self, frameiod_daemon):
        with capture_logs() as logs:
            daemon = await frameiod_daemon(
                {"comment_on_ready": app}, settings='[plugins.comment_on_ready]\ntext = "x"\n'
            )
            sent = await daemon.send("file.ready", **FILE)

        info = daemon.daemon.plugins.plugins["comment_on_ready"]
        assert info.status == "failed"
        assert info.reason.startswith("frameiod_startup raised NoClientError: ")
        assert "[frameio] token" in info.reason
        # The daemon runs on without it: the event is accepted and reaches no handler.
        assert (sent.status, sent.outcomes) == (202, [])
        assert any(entry["event"] == "plugin failed" for entry in logs)


class TestCommentAction:
    """The "Comment" custom action, through signed requests to ``/actions/default``."""

    async def test_the_first_click_answers_the_form(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        status, answer = await daemon.act(ACTION, **ON_FILE)

        assert (status, answer) == (200, FORM)
        assert api.requests == []

    async def test_the_submission_posts_its_text_and_answers_a_message(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        status, answer = await daemon.act(ACTION, data={"text": "Looks great"}, **ON_FILE)

        assert (status, answer) == (
            200,
            {"title": "Comment posted", "description": "Your comment is on the file."},
        )
        [request] = api.requests
        assert (request.method, request.path) == (
            "POST",
            "/v4/accounts/acc-1/files/file-1/comments",
        )
        assert request.authorization == "Bearer test-token"
        assert request.body == {"data": {"text": "Looks great"}}
        assert [c["text"] for c in api.comments] == ["Looks great"]

    @pytest.mark.parametrize("data", [{"text": ""}, {"text": " \n "}, {}, {"text": None}])
    async def test_an_empty_submission_shows_the_form_again_and_posts_nothing(
        self, api, frameiod_daemon, data
    ):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        status, answer = await daemon.act(ACTION, data=data, **ON_FILE)

        assert (status, answer) == (
            200,
            {**FORM, "description": "The comment was empty. Write something to post."},
        )
        assert api.requests == []

    async def test_a_folder_is_refused_without_calling_the_api(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        answers = [
            await daemon.act(ACTION, data=data, resource={"id": "fold-1", "type": "folder"})
            for data in (None, {"text": "Looks great"})
        ]

        refusal = {"title": "Not available here", "description": "Comment works on: file."}
        assert answers == [(200, refusal)] * 2
        assert api.requests == []

    async def test_a_re_sent_submission_does_not_comment_twice(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        submission = {**ON_FILE, "interaction_id": "int-1", "data": {"text": "Once"}}

        first = await daemon.act(ACTION, **submission)
        again = await daemon.act(ACTION, **submission)
        other = await daemon.act(ACTION, **{**submission, "interaction_id": "int-2"})

        assert first == again == other
        assert first[1]["title"] == "Comment posted"
        assert [c["text"] for c in api.comments] == ["Once", "Once"]
        assert len(api.requests) == 2

    async def test_a_failed_post_answers_a_reference_and_can_be_submitted_again(
        self, api, frameiod_daemon
    ):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        submission = {**ON_FILE, "interaction_id": "int-1", "data": {"text": "Retry me"}}
        api.fail_next = 1

        failed = await daemon.act(ACTION, **submission)
        retried = await daemon.act(ACTION, **submission)

        assert failed[1]["title"] == "Something went wrong"
        assert "Reference for the operator: " in failed[1]["description"]
        assert retried[1]["title"] == "Comment posted"
        assert len(api.requests) == 2
        assert [c["text"] for c in api.comments] == ["Retry me"]

    async def test_a_deleted_file_answers_file_not_found(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))
        api.deleted.add("file-1")

        status, answer = await daemon.act(ACTION, data={"text": "Hello?"}, **ON_FILE)

        assert (status, answer) == (
            200,
            {
                "title": "File not found",
                "description": "The file no longer exists; no comment was posted.",
            },
        )
        assert len(api.requests) == 1
        assert api.comments == []

    async def test_shutdown_forgets_the_submissions_it_remembered(self, api, tmp_path):
        async with run_daemon(
            {"comment_on_ready": app}, settings=settings(api), directory=tmp_path
        ) as daemon:
            await daemon.act(ACTION, data={"text": "x"}, **ON_FILE)
            assert len(frameiod_comment_on_ready._state.posts) == 1

        assert frameiod_comment_on_ready._state.posts == {}


class TestConfig:
    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            ('text = ""', 'the comment text must not be empty, got ""'),
            ('text = "  \\t "', 'the comment text must not be empty, got "  \\t "'),
            ("text = 5", "input should be a valid string, got 5"),
        ],
        ids=["empty", "blank", "not-a-string"],
    )
    async def test_a_bad_text_is_a_config_error_naming_the_key(
        self, api, frameiod_daemon, tmp_path, line, problem
    ):
        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon(
                {"comment_on_ready": app}, settings=settings(api, table=line + "\n")
            )

        assert caught.value.problems == [
            f"{tmp_path / 'config.toml'}: plugins.comment_on_ready.text: {problem}"
        ]

    async def test_an_unknown_key_is_a_config_error_with_a_hint(
        self, api, frameiod_daemon, tmp_path
    ):
        with pytest.raises(ConfigError) as caught:
            await frameiod_daemon(
                {"comment_on_ready": app}, settings=settings(api, table='txt = "Ready!"\n')
            )

        assert caught.value.problems == [
            f"{tmp_path / 'config.toml'}: plugins.comment_on_ready.txt: unknown key "
            '(did you mean "text"?)'
        ]

    async def test_the_validated_table_is_app_config(self, api, frameiod_daemon):
        daemon = await frameiod_daemon({"comment_on_ready": app}, settings=settings(api))

        config = daemon.daemon.plugins.plugins["comment_on_ready"].config
        assert config is app.config
        assert config == CommentOnReadyConfig(text="Ready!")

    def test_the_readme_documents_the_default_text_and_the_action_key(self):
        readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")

        assert f'| `text` | `"{DEFAULT_TEXT}"` |' in readme
        assert f"| event | `{ACTION}` (" in readme


class TestPackaging:
    def test_the_entry_point_resolves_to_the_app(self):
        [entry] = importlib.metadata.entry_points(group="frameiod.plugins", name="comment_on_ready")

        assert entry.value == "frameiod_comment_on_ready:app"
        assert entry.load() is app
        assert entry.dist is not None
        assert (entry.dist.name, entry.dist.version) == ("frameiod-comment-on-ready", "0.1.0")

    def test_the_package_is_typed(self):
        assert (Path(frameiod_comment_on_ready.__file__).parent / "py.typed").is_file()
