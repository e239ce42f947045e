"""frameiod-otel (plugins/frameiod-otel) on a real daemon, exporting to a local OTLP/HTTP
receiver that decodes the export requests with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("frameiod_otel", reason="plugins/frameiod-otel is not installed")

from aiohttp import web
from frameio.comments import CreateCommentParamsData
from frameiod_otel import OtelConfig, OtelPlugin
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import ValidationError
from redis_support import free_port
from structlog.testing import capture_logs
from support import wait_until

from frameiod import App, Message, WebhookEvent
from frameiod.events import example_payload
from frameiod.testing import config_toml, run_daemon

FAST = 'backoff_initial = "10ms"\nbackoff_max = "20ms"\ndrain_timeout = "2s"'
SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_PARENT = f"00-{SENDER_TRACE}-00f067aa0ba902b7-01"


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector:
    """A local OTLP/HTTP receiver: the spans of every export request, decoded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.headers: list[CIMultiDict[str]] = []
        self.url = ""
        self.arrived = asyncio.Event()

    async def traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        self.headers.append(request.headers.copy())
        for resource_spans in export.resource_spans:
            self.resources.append(
                {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, name: str) -> list[Span]:
        return [span for span in self.spans if span.name == name]


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


@pytest.fixture
async def frameio() -> AsyncIterator[str]:
    """Frame.io's comments endpoint, answering every comment."""

    async def comment(request: web.Request) -> web.Response:
        return web.json_response({"data": {"id": "c1", "text": "Ready"}})

    app = web.Application()
    app.router.add_post("/v4/accounts/{account}/files/{file}/comments", comment)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def flaky_commenter() -> App:
    """Comments through app.client, and fails its first call after the comment."""
    app = App()
    calls: list[int] = []

    @app.on_webhook("file.ready")
    async def comment_on_ready(event: WebhookEvent) -> None:
        await app.client.comments.create(
            event.account_id, event.resource_id, data=CreateCommentParamsData(text="Ready")
        )
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first call fails")

    return app


def settings(endpoint: str, frameio: str | None = None) -> str:
    text = f'[plugins.otel]\nendpoint = "{endpoint}"\nheaders = {{ x-team = "media" }}\n'
    if frameio:
        text += f'[frameio]\ntoken = "t"\nbase_url = "{frameio}"\n'
    return config_toml(dispatch=FAST, extra=text)


IDS = {
    "account": {"id": "acc-1"},
    "workspace": {"id": "ws-1"},
    "project": {"id": "proj-1"},
    "resource": {"id": "file-1", "type": "file"},
}


class TestOneEventOneTrace:
    async def test_the_receive_and_each_attempt_are_one_trace_with_api_calls_inside(
        self, collector: Collector, frameio: str
    ):
        plugins = {"app": flaky_commenter(), "otel": OtelPlugin()}
        async with run_daemon(plugins, config_text=settings(collector.url, frameio)) as daemon:
            sent = await daemon.send("file.ready", wait=False, **IDS)
            assert sent.status == 202
            assert sent.id is not None
            outcomes = await daemon.wait_for(sent.id, settled=True)
        # The daemon's stop exported what was pending.
        assert [o.status for o in outcomes] == ["ok"]
        [received] = collector.named("POST /webhooks/{source}")
        handled = sorted(
            collector.named("handle comment_on_ready"),
            key=lambda span: attributes(span)["frameiod.attempt"],
        )
        api = [span for span in collector.spans if span.kind == Span.SPAN_KIND_CLIENT]
        assert len(handled) == 2
        assert len(api) == 2

        frameio_ids = {
            "frameio.event.type": "file.ready",
            "frameio.resource.id": "file-1",
            "frameio.account.id": "acc-1",
            "frameio.workspace.id": "ws-1",
            "frameio.project.id": "proj-1",
        }
        assert received.kind == Span.SPAN_KIND_SERVER
        assert attributes(received) == {
            "http.request.method": "POST",
            "http.route": "/webhooks/{source}",
            "url.path": "/webhooks/default",
            "url.scheme": "http",
            "http.response.status_code": 202,
            "frameiod.source": "default",
            "frameiod.event_id": sent.id,
            **frameio_ids,
        }
        for attempt, span in enumerate(handled, start=1):
            assert span.kind == Span.SPAN_KIND_CONSUMER
            assert span.trace_id == received.trace_id
            assert span.parent_span_id == received.span_id
            assert [(link.trace_id, link.span_id) for link in span.links] == [
                (received.trace_id, received.span_id)
            ]
            assert attributes(span) == {
                **frameio_ids,
                "frameiod.event_id": sent.id,
                "frameiod.handler": "comment_on_ready",
                "frameiod.plugin": "app",
                "frameiod.attempt": attempt,
                "frameiod.outcome": "error" if attempt == 1 else "ok",
            }
        assert handled[0].status.code == Status.STATUS_CODE_ERROR
        [exception] = [e for e in handled[0].events if e.name == "exception"]
        assert attributes(exception)["exception.message"] == "first call fails"
        assert handled[1].status.code != Status.STATUS_CODE_ERROR
        # Each API call is a client span inside the handler call that made it.
        assert sorted(span.parent_span_id for span in api) == sorted(
            span.span_id for span in handled
        )
        for span in api:
            assert span.trace_id == received.trace_id
            assert attributes(span)["http.response.status_code"] == 200
        assert collector.resources[0]["service.name"] == "frameiod"
        assert collector.headers[0]["x-team"] == "media"

    async def test_a_senders_traceparent_is_continued(self, collector: Collector):
        app = App()

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            pass

        plugins = {"app": app, "otel": OtelPlugin()}
        async with run_daemon(plugins, config_text=settings(collector.url)) as daemon:
            payload = json.dumps(example_payload("file.ready")).encode()
            status, answer = await daemon.post(payload, headers={"traceparent": SENDER_PARENT})
            assert status == 202
            await daemon.wait_for(answer["id"], settled=True)
        [received] = collector.named("POST /webhooks/{source}")
        [handled] = collector.named("handle handle")
        assert received.trace_id.hex() == SENDER_TRACE
        assert received.parent_span_id.hex() == "00f067aa0ba902b7"
        assert handled.trace_id.hex() == SENDER_TRACE

    async def test_a_custom_action_is_a_server_span_with_its_handler_call_inside(
        self, collector: Collector
    ):
        app = App()

        @app.on_action("acme.go")
        async def go(event: Any) -> Message:
            return Message("Done", "ran")

        plugins = {"app": app, "otel": OtelPlugin()}
        async with run_daemon(plugins, config_text=settings(collector.url)) as daemon:
            status, answer = await daemon.act("acme.go")
        assert (status, answer["title"]) == (200, "Done")
        [received] = collector.named("POST /actions/{source}")
        [called] = collector.named("action acme.go")
        assert received.kind == Span.SPAN_KIND_SERVER
        assert attributes(received)["http.response.status_code"] == 200
        assert attributes(received)["frameio.event.type"] == "acme.go"
        assert (called.trace_id, called.parent_span_id) == (received.trace_id, received.span_id)
        assert attributes(called)["frameiod.outcome"] == "ok"

    async def test_a_duplicate_names_the_original_event(self, collector: Collector):
        plugins = {"otel": OtelPlugin()}
        async with run_daemon(plugins, config_text=settings(collector.url)) as daemon:
            payload = json.dumps({"type": "file.ready", **IDS}).encode()
            stamp = int(time.time())
            first, accepted = await daemon.post(payload, timestamp=stamp)
            again, duplicate = await daemon.post(payload, timestamp=stamp)
        assert (first, again) == (202, 200)
        assert duplicate["id"] == accepted["id"]
        spans = collector.named("POST /webhooks/{source}")
        assert [attributes(span).get("frameiod.duplicate") for span in spans] == [None, True]
        assert [attributes(span)["frameiod.event_id"] for span in spans] == [accepted["id"]] * 2
        assert attributes(spans[1])["frameio.workspace.id"] == "ws-1"

    async def test_a_refused_request_is_a_span_with_its_status_and_no_event(
        self, collector: Collector
    ):
        plugins = {"otel": OtelPlugin()}
        async with run_daemon(plugins, config_text=settings(collector.url)) as daemon:
            payload = json.dumps(example_payload("file.ready")).encode()
            status, _ = await daemon.post(payload, secret="wrong")
        assert status == 401
        [received] = collector.named("POST /webhooks/{source}")
        assert attributes(received)["http.response.status_code"] == 401
        assert "frameiod.event_id" not in attributes(received)


class TestCollectorUnreachable:
    async def test_answers_and_handlers_are_not_delayed_and_the_failure_is_logged_once(
        self, monkeypatch: pytest.MonkeyPatch
    ):
        # Batches every 20 ms, each given up after a second: many failures in the test.
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
        app = App()
        ran: list[str] = []

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            ran.append(event.type)

        nowhere = f"http://127.0.0.1:{free_port()}"
        plugins = {"app": app, "otel": OtelPlugin()}
        with capture_logs() as logs:
            async with run_daemon(plugins, config_text=settings(nowhere)) as daemon:
                started = time.perf_counter()
                sent = [await daemon.send("file.ready") for _ in range(20)]
                took = time.perf_counter() - started
                assert [s.status for s in sent] == [202] * 20
                assert [o.status for s in sent for o in s.outcomes] == ["ok"] * 20
                assert len(ran) == 20
                assert took < 5  # the SDK retries each batch for up to 10 s
                # Once the first batch's export has given up (from the SDK's thread).
                await asyncio.to_thread(
                    wait_until,
                    lambda: any(line["event"] == "spans cannot be exported" for line in logs),
                )
                stopping = time.perf_counter()
            stopped = time.perf_counter() - stopping
        assert stopped < 2 + 1  # drain_timeout, and a little
        failed = [line for line in logs if line["event"] == "spans cannot be exported"]
        assert len(failed) == 1
        assert failed[0]["endpoint"] == f"{nowhere}/v1/traces"


class TestEnvironment:
    async def test_the_otlp_variables_fill_in_headers_and_compression(
        self, collector: Collector, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=post%20production")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        text = config_toml(dispatch=FAST, extra=f'[plugins.otel]\nendpoint = "{collector.url}"\n')
        async with run_daemon({"otel": OtelPlugin()}, config_text=text) as daemon:
            sent = await daemon.send("file.ready", wait=False)
        assert sent.status == 202
        assert collector.headers[0]["x-team"] == "post production"
        assert collector.headers[0]["content-encoding"] == "gzip"
        [received] = collector.named("POST /webhooks/{source}")
        assert attributes(received)["frameiod.event_id"] == sent.id


class TestConfig:
    def test_unknown_keys_and_bad_values_are_refused(self):
        with pytest.raises(ValidationError, match="extra_forbidden"):
            OtelConfig.model_validate({"endpont": "http://127.0.0.1:4318"})
        with pytest.raises(ValidationError, match="http"):
            OtelConfig.model_validate({"endpoint": "127.0.0.1:4318"})
        with pytest.raises(ValidationError, match="less than or equal"):
            OtelConfig.model_validate({"sample_ratio": 2})
