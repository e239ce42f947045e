"""Custom actions through real HTTP: forms, messages, deadlines, failures, and the wire."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import install_plugin, run_cli, write_config

from frameiod import (
    ActionEvent,
    App,
    CheckboxField,
    Form,
    LinkField,
    Message,
    SelectField,
    SelectOption,
    TextareaField,
    TextField,
)
from frameiod.events import example_action
from frameiod.testing import TEST_SECRET, run_daemon


def transcode_app() -> App:
    app = App()

    @app.on_action("acme.transcode", name="Transcode", resource_types=["file"])
    async def transcode(event: ActionEvent) -> Message | Form:
        if event.data is None:
            return Form(
                title="Transcode",
                description="Pick a codec",
                fields=[
                    SelectField(
                        label="Codec",
                        name="codec",
                        value="h264",
                        options=[SelectOption("H.264", "h264"), SelectOption("ProRes", "prores")],
                    )
                ],
            )
        return Message("Queued", f"{event.resource_id} → {event.data['codec']}")

    return app


class TestInteraction:
    async def test_first_click_gets_a_form_and_the_submission_a_message(self):
        async with run_daemon({"acme": transcode_app()}) as daemon:
            status, form = await daemon.act("acme.transcode")
            assert status == 200
            assert form == {
                "title": "Transcode",
                "description": "Pick a codec",
                "fields": [
                    {
                        "type": "select",
                        "label": "Codec",
                        "name": "codec",
                        "value": "h264",
                        "options": [
                            {"name": "H.264", "value": "h264"},
                            {"name": "ProRes", "value": "prores"},
                        ],
                    }
                ],
            }
            status, message = await daemon.act(
                "acme.transcode", data={"codec": "prores"}, resource={"id": "f1", "type": "file"}
            )
            metrics = await daemon.metrics()
        assert (status, message) == (200, {"title": "Queued", "description": "f1 → prores"})
        key = (
            "frameiod_actions_total",
            (("action", "acme.transcode"), ("outcome", "ok"), ("source", "default")),
        )
        assert metrics[key] == 2

    async def test_a_submission_with_only_the_documented_fields_is_accepted(self):
        async with run_daemon({"acme": transcode_app()}) as daemon:
            body = {
                "type": "acme.transcode",
                "interaction_id": "i1",
                "action_id": "a1",
                "data": {"codec": "h264"},
            }
            status, answer = await daemon.post(json.dumps(body).encode(), path="actions")
        # No resource at all: the resource-type check cannot refuse what it cannot see.
        assert (status, answer) == (200, {"title": "Queued", "description": "None → h264"})

    async def test_a_handler_returning_none_gets_an_empty_200(self):
        app = App()
        seen: list[str] = []

        @app.on_action("acme.ping")
        def ping(event: ActionEvent) -> None:  # plain function: runs in a thread
            seen.append(event.interaction_id)

        async with run_daemon({"acme": app}) as daemon:
            status, answer = await daemon.act("acme.ping", interaction_id="int-1")
        assert (status, answer, seen) == (200, None, ["int-1"])

    async def test_an_unsupported_resource_type_gets_a_message_naming_the_supported_ones(self):
        async with run_daemon({"acme": transcode_app()}) as daemon:
            status, answer = await daemon.act(
                "acme.transcode", resource={"id": "d1", "type": "folder"}
            )
        assert status == 200
        assert answer == {"title": "Not available here", "description": "Transcode works on: file."}


class TestRepeats:
    """Frame.io may send an action request again, and a captured one can be replayed
    within its tolerance: the handler runs once per signed request."""

    async def test_a_repeated_request_gets_the_first_answer_and_runs_nothing(self):
        app = App()
        calls: list[str] = []

        @app.on_action("acme.render")
        async def render(event: ActionEvent) -> Message:
            calls.append(event.interaction_id)
            return Message("Queued", f"render {len(calls)}")

        body = json.dumps(example_action("acme.render")).encode()
        with capture_logs() as logs:
            async with run_daemon({"acme": app}) as daemon:
                timestamp = int(time.time())
                answers = [
                    await daemon.post(body, path="actions", timestamp=timestamp) for _ in range(3)
                ]
                # Another request (a new timestamp, so a new signature) runs again.
                later = await daemon.post(body, path="actions", timestamp=timestamp - 1)
                metrics = await daemon.metrics()
        first = (200, {"title": "Queued", "description": "render 1"})
        assert answers == [first] * 3
        assert later == (200, {"title": "Queued", "description": "render 2"})
        assert len(calls) == 2
        repeats = [
            e for e in logs if e["event"] == "action request repeated; answered as the first"
        ]
        assert len(repeats) == 2
        key = (
            "frameiod_actions_total",
            (("action", "acme.render"), ("outcome", "duplicate"), ("source", "default")),
        )
        assert metrics[key] == 2

    async def test_a_repeat_while_the_first_is_answered_waits_for_its_answer(self):
        app = App()
        release = asyncio.Event()
        calls = 0

        @app.on_action("acme.slow")
        async def slow(event: ActionEvent) -> Message:
            nonlocal calls
            calls += 1
            await release.wait()
            return Message("Done", "once")

        body = json.dumps(example_action("acme.slow")).encode()
        async with run_daemon({"acme": app}) as daemon:
            timestamp = int(time.time())
            first = asyncio.create_task(daemon.post(body, path="actions", timestamp=timestamp))
            async with asyncio.timeout(5):
                while calls == 0:  # noqa: ASYNC110 - the handler has begun
                    await asyncio.sleep(0.01)
            repeat = asyncio.create_task(daemon.post(body, path="actions", timestamp=timestamp))
            release.set()
            answers = [await first, await repeat]
        assert answers == [(200, {"title": "Done", "description": "once"})] * 2
        assert calls == 1


class TestFailures:
    async def test_a_handler_that_raises_gets_a_message_with_a_reference_not_a_500(self):
        app = App()

        @app.on_action("acme.broken")
        async def broken(event: ActionEvent) -> Message:
            raise RuntimeError("render farm unreachable")

        with capture_logs() as logs:
            async with run_daemon({"acme": app}) as daemon:
                status, answer = await daemon.act("acme.broken")
                metrics = await daemon.metrics()
        assert status == 200
        assert answer["title"] == "Something went wrong"
        failure = next(e for e in logs if e["event"] == "action handler failed")
        assert failure["error"] == "RuntimeError: render farm unreachable"
        assert answer["description"].endswith(failure["request_id"])
        key = (
            "frameiod_actions_total",
            (("action", "acme.broken"), ("outcome", "error"), ("source", "default")),
        )
        assert metrics[key] == 1

    async def test_a_handler_calling_sys_exit_gets_the_failure_message_not_a_dead_daemon(self):
        app = App()

        @app.on_action("acme.exits")
        async def exits(event: ActionEvent) -> Message:
            raise SystemExit(1)

        @app.on_action("acme.fine")
        async def fine(event: ActionEvent) -> Message:
            return Message("Fine", "still here")

        with capture_logs() as logs:
            async with run_daemon({"acme": app}) as daemon:
                status, answer = await daemon.act("acme.exits")
                after = await daemon.act("acme.fine")
        assert (status, answer["title"]) == (200, "Something went wrong")
        failure = next(e for e in logs if e["event"] == "action handler failed")
        assert failure["error"] == "HandlerAborted: the handler raised SystemExit(1)"
        assert after == (200, {"title": "Fine", "description": "still here"})

    async def test_an_answer_json_cannot_hold_is_a_failure_message_not_a_bare_500(self):
        app = App()

        @app.on_action("acme.uuid")
        async def gives_a_uuid(event: ActionEvent) -> Message:
            return Message("Created", uuid.UUID(int=7))  # type: ignore[arg-type]

        with capture_logs() as logs:
            async with run_daemon({"acme": app}) as daemon:
                status, answer = await daemon.act("acme.uuid")
                metrics = await daemon.metrics()
        assert (status, answer["title"]) == (200, "Something went wrong")
        [failure] = [
            e for e in logs if e["event"] == "action handler returned an answer that is not JSON"
        ]
        assert failure["error"] == "TypeError: Object of type UUID is not JSON serializable"
        assert answer["description"].endswith(failure["request_id"])
        assert not [e for e in logs if e["event"] == "action handled"]
        key = (
            "frameiod_actions_total",
            (("action", "acme.uuid"), ("outcome", "error"), ("source", "default")),
        )
        assert metrics[key] == 1

    async def test_an_answer_of_the_wrong_type_is_a_failure_message(self):
        app = App()

        @app.on_action("acme.odd")
        async def odd(event: ActionEvent) -> Any:
            return {"title": "a dict is not a Message"}

        async with run_daemon({"acme": app}) as daemon:
            status, answer = await daemon.act("acme.odd")
        assert (status, answer["title"]) == (200, "Something went wrong")

    async def test_a_slow_handler_is_answered_at_the_deadline_and_finishes_in_the_background(
        self,
    ):
        app = App()
        release = asyncio.Event()
        finished: list[str] = []

        @app.on_action("acme.slow")
        async def slow(event: ActionEvent) -> Message:
            await release.wait()
            finished.append(event.interaction_id)
            return Message("Done")

        config = f"""
[server]
host = "127.0.0.1"
port = 0
[sources.default]
secrets = ["{TEST_SECRET}"]
action_deadline = "200ms"
action_late_message = "Rendering; you will get a comment when it is done."
"""
        async with run_daemon({"acme": app}, config_text=config) as daemon:
            status, answer = await daemon.act("acme.slow", interaction_id="late-1")
            assert (status, answer) == (
                200,
                {
                    "title": "Working on it",
                    "description": "Rendering; you will get a comment when it is done.",
                },
            )
            assert finished == []
            release.set()
        assert finished == ["late-1"]  # the daemon waited for it while stopping

    async def test_an_unknown_action_is_404_only_after_the_signature(self):
        async with run_daemon({"acme": transcode_app()}) as daemon:
            forged = await daemon.act("acme.nothing", secret="forged")
            signed = await daemon.act("acme.nothing")
            metrics = await daemon.metrics()
        assert forged == (401, {"error": "unauthorized"})
        assert signed[0] == 404
        assert signed[1]["error"] == "unknown_action"
        key = (
            "frameiod_actions_total",
            (("action", "unknown"), ("outcome", "unknown_action"), ("source", "default")),
        )
        assert metrics[key] == 1

    async def test_a_malformed_action_is_refused_like_a_webhook(self):
        async with run_daemon({"acme": transcode_app()}) as daemon:
            status, answer = await daemon.post(b'{"type": "acme.transcode"}', path="actions")
        assert status == 422
        assert "action_id" in answer["detail"]


class TestRegistration:
    async def test_an_action_secret_makes_its_source_accept_it(self):
        app = App()

        @app.on_action("acme.secret", secret="action-secret")
        async def guarded(event: ActionEvent) -> Message:
            return Message("ok")

        async with run_daemon({"acme": app}) as daemon:
            assert (await daemon.act("acme.secret", secret="action-secret"))[0] == 200
            assert (await daemon.act("acme.secret", secret="another"))[0] == 401


class TestWire:
    def test_every_field_serialises_to_the_documented_shape(self):
        form = Form(
            title="Deliver",
            description="Where to?",
            fields=[
                TextField(label="Title", name="title", value="clip.mov"),
                TextareaField(label="Notes", name="notes"),
                SelectField(label="Codec", name="codec", options=[SelectOption("H.264", "h264")]),
                CheckboxField(label="Notify", name="notify"),
                CheckboxField(label="Archive", name="archive", value=True),
                LinkField(label="Result", name="result", value="https://example.com/r/1"),
            ],
        )
        assert form.to_wire()["fields"] == [
            {"type": "text", "label": "Title", "name": "title", "value": "clip.mov"},
            {"type": "textarea", "label": "Notes", "name": "notes"},
            {
                "type": "select",
                "label": "Codec",
                "name": "codec",
                "options": [{"name": "H.264", "value": "h264"}],
            },
            {"type": "boolean", "label": "Notify", "name": "notify", "value": "false"},
            {"type": "boolean", "label": "Archive", "name": "archive", "value": "true"},
            {
                "type": "link",
                "label": "Result",
                "name": "result",
                "value": "https://example.com/r/1",
            },
        ]

    def test_a_form_needs_fields_and_unique_names(self):
        with pytest.raises(ValueError, match="at least one field"):
            Form(title="Empty")
        with pytest.raises(ValueError, match="unique"):
            Form(title="Twice", fields=[TextField("A", "x"), TextField("B", "x")])
        with pytest.raises(ValueError, match="at least one option"):
            SelectField(label="Codec", name="codec")

    def test_a_message_is_title_and_description(self):
        assert Message("Done", "Queued").to_wire() == {"title": "Done", "description": "Queued"}


ACME = """
from frameiod import App, Message

app = App()


@app.on_action("acme.transcode", name="Transcode", resource_types=["file"])
async def transcode(event):
    return Message("ok")
"""


class TestListing:
    def test_frameiod_plugins_lists_the_actions(self, tmp_path):
        env = {**install_plugin(tmp_path / "site", "acme", ACME), "FRAMEIOD_PLUGINS": "acme"}
        config = str(write_config(tmp_path))
        text = run_cli("plugins", "--config", config, env=env)
        listed = run_cli("plugins", "--json", "--config", config, env=env)
        assert text.returncode == 0, text.stderr
        assert "  action  acme.transcode: Transcode (source default)" in text.stdout
        acme = next(p for p in json.loads(listed.stdout) if p["name"] == "acme")
        assert acme["actions"] == [
            {
                "action": "acme.transcode",
                "name": "Transcode",
                "description": "",
                "resource_types": ["file"],
                "source": "default",
                "secrets": 0,
            }
        ]


class TestSendAction:
    async def test_frameiod_send_action_prints_the_answer(self, tmp_path):
        config = write_config(tmp_path)
        async with run_daemon(
            {"acme": transcode_app()}, config_text=config.read_text(), directory=tmp_path
        ) as daemon:
            first = await asyncio.to_thread(
                run_cli,
                "send",
                "--action",
                "acme.transcode",
                "--config",
                str(config),
                "--url",
                daemon.url("/actions/default"),
            )
            second = await asyncio.to_thread(
                run_cli,
                "send",
                "--action",
                "acme.transcode",
                "--data",
                '{"codec": "prores"}',
                "--resource-id",
                "f9",
                "--config",
                str(config),
                "--url",
                daemon.url("/actions/default"),
            )
        assert first.returncode == 0, first.stderr
        status, body = first.stdout.strip().split(" ", 1)
        assert status == "200"
        assert json.loads(body)["fields"][0]["name"] == "codec"
        status, body = second.stdout.strip().split(" ", 1)
        assert (status, json.loads(body)) == (
            "200",
            {"title": "Queued", "description": "f9 → prores"},
        )
