"""The receiver over a real socket: every status code, in the documented order of checks."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from support import SECRET, event_body, make_config, signed_headers

from frameiod import __version__
from frameiod.config import Config
from frameiod.http.probes import readyz
from frameiod.http.receiver import RECEIVER, Receiver
from frameiod.http.server import receiver_app
from frameiod.metrics import Metrics
from frameiod.plugins.handlers import WebhookHandler
from frameiod.plugins.routing import Routes
from frameiod.secret_ids import secret_id
from frameiod.store.base import SpoolUnavailable
from frameiod.store.sqlite import Spool

NOW = 1_800_000_000
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

ClientFactory = Callable[..., Awaitable[TestClient]]


class Daemon:
    """An app under test, its spool, and a client talking to it over a socket."""

    def __init__(self, client: TestClient, app: web.Application) -> None:
        self.client = client
        self.app = app
        self.receiver: Receiver = app[RECEIVER]
        self.spool: Spool = self.receiver.spool
        self._sent = 0

    async def post(
        self,
        body: bytes,
        *,
        source: str = "default",
        headers: dict[str, str] | None = None,
        secret: str = SECRET,
        timestamp: int | None = None,
    ) -> tuple[int, dict[str, object]]:
        if timestamp is None:
            # A new timestamp per request: the same signed request twice is a duplicate.
            self._sent += 1
            timestamp = NOW - self._sent
        if headers is None:
            headers = signed_headers(body, secret, timestamp)
        # skip_auto_headers: aiohttp would otherwise add its own Content-Type to raw bytes.
        response = await self.client.post(
            f"/webhooks/{source}", data=body, headers=headers, skip_auto_headers=["Content-Type"]
        )
        return response.status, await response.json()

    async def spooled(self, event_id: str) -> dict[str, object]:
        """The event row the spool committed for ``event_id``."""
        rows = await self.spool.run(
            lambda conn: conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchall()
        )
        assert len(rows) == 1, f"event {event_id} is not in the spool"
        names = [
            "id",
            "source",
            "type",
            "body",
            "body_hash",
            "timestamp",
            "signature",
            "secret_id",
            "received_at",
            "request_key",
            "trace_context",
        ]
        return dict(zip(names, rows[0], strict=True))

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await self.client.get("/metrics")
        assert response.status == 200
        samples = {}
        for family in text_string_to_metric_families(await response.text()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def routes() -> Routes:
    return Routes(())


@pytest.fixture
async def daemon(
    aiohttp_client: ClientFactory, config: Config, routes: Routes, tmp_path: Path
) -> AsyncIterator[Daemon]:
    spool = await Spool.open(tmp_path / "spool.db")
    app = receiver_app(
        config,
        spool=spool,
        metrics=Metrics(config.sources, __version__),
        routes=routes,
        clock=lambda: NOW,
    )
    client = await aiohttp_client(app)
    yield Daemon(client, app)
    await spool.close()


class TestAccepted:
    async def test_signed_event_is_acknowledged_with_a_time_ordered_id(self, daemon: Daemon):
        status, body = await daemon.post(event_body())
        assert status == 202
        assert body["status"] == "accepted"
        assert UUID7.fullmatch(str(body["id"]))

    async def test_accepted_event_is_on_disk_intact_before_the_answer(self, daemon: Daemon):
        raw = event_body("comment.created", extra={"kept": True})
        headers = signed_headers(raw, timestamp=NOW)
        _, body = await daemon.post(raw, headers=headers)
        row = await daemon.spooled(str(body["id"]))
        assert row["source"] == "default"
        assert row["body"] == raw
        assert row["type"] == "comment.created"
        assert row["timestamp"] == NOW
        assert row["signature"] == headers["X-Frameio-Signature"]
        assert row["received_at"] == NOW

    async def test_ids_increase_in_acceptance_order(self, daemon: Daemon):
        ids = [str((await daemon.post(event_body()))[1]["id"]) for _ in range(20)]
        assert ids == sorted(ids)
        assert len(set(ids)) == 20
        assert all(uuid.UUID(i).version == 7 for i in ids)
        assert all(str(uuid.UUID(i)) == i for i in ids)  # the canonical 8-4-4-4-12 form

    async def test_event_type_no_handler_wants_is_still_accepted(self, daemon: Daemon):
        status, _ = await daemon.post(event_body("share.viewed.someday"))
        assert status == 202

    async def test_missing_content_type_is_accepted(self, daemon: Daemon):
        raw = event_body()
        status, _ = await daemon.post(
            raw, headers=signed_headers(raw, timestamp=NOW, content_type=None)
        )
        assert status == 202

    @pytest.mark.parametrize(
        "content_type",
        ["application/json", "application/json; charset=utf-8", "application/vnd.frameio+json"],
    )
    async def test_json_content_types_are_accepted(self, daemon: Daemon, content_type: str):
        raw = event_body()
        headers = signed_headers(raw, timestamp=NOW, content_type=content_type)
        assert (await daemon.post(raw, headers=headers))[0] == 202

    async def test_body_of_exactly_the_limit_is_accepted(self, daemon: Daemon):
        limit = daemon.receiver.config.server.max_body_bytes
        raw = event_body(padding="")
        raw = event_body(padding="x" * (limit - len(raw)))
        assert len(raw) == limit
        assert (await daemon.post(raw))[0] == 202


class TestRotation:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Config:
        return make_config(
            tmp_path,
            """
[sources.default]
secrets = ["old-secret", "new-secret"]
""",
        )

    @pytest.mark.parametrize("secret", ["old-secret", "new-secret"])
    async def test_each_configured_secret_is_accepted(self, daemon: Daemon, secret: str):
        status, body = await daemon.post(event_body(), secret=secret)
        assert status == 202
        assert (await daemon.spooled(str(body["id"])))["secret_id"] == secret_id(secret)

    async def test_a_retired_secret_is_refused(self, daemon: Daemon):
        assert (await daemon.post(event_body(), secret="older-secret"))[0] == 401


class TestTooLarge:
    async def test_content_length_over_the_limit_is_refused_before_reading(self, daemon: Daemon):
        limit = daemon.receiver.config.server.max_body_bytes
        raw = event_body(padding="x" * limit)
        with capture_logs() as logs:
            status, body = await daemon.post(raw)
        assert status == 413
        assert body["error"] == "too_large"
        assert f"> {limit} bytes" in str(body["detail"])
        assert logs[-1]["reason"] == "too_large"

    async def test_chunked_body_over_the_limit_is_cut_off_while_reading(self, daemon: Daemon):
        limit = daemon.receiver.config.server.max_body_bytes

        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(limit // 1000 + 2):
                yield b"x" * 1000

        headers = signed_headers(b"", timestamp=NOW)
        response = await daemon.client.post("/webhooks/default", data=trickle(), headers=headers)
        assert response.status == 413
        assert response.headers.get("Content-Length") is not None
        assert f"body exceeds {limit} bytes" in (await response.json())["detail"]

    async def test_size_is_checked_before_the_source(self, daemon: Daemon):
        raw = b"x" * (daemon.receiver.config.server.max_body_bytes + 1)
        assert (await daemon.post(raw, source="nosuch"))[0] == 413


class TestUnknownSource:
    async def test_unconfigured_source_is_404(self, daemon: Daemon):
        status, body = await daemon.post(event_body(), source="elsewhere")
        assert status == 404
        assert body["error"] == "unknown_source"


class TestUnauthorized:
    async def test_wrong_secret_is_401_and_the_log_says_why(self, daemon: Daemon):
        with capture_logs() as logs:
            status, body = await daemon.post(event_body(), secret="forged")
        assert status == 401
        assert body == {"error": "unauthorized"}
        assert logs[-1]["event"] == "webhook rejected"
        assert logs[-1]["reason"] == "signature_mismatch"
        assert logs[-1]["outcome"] == "bad_signature"
        assert logs[-1]["source"] == "default"

    @pytest.mark.parametrize("skew", [-301, 301])
    async def test_timestamp_outside_tolerance_is_401_stale(self, daemon: Daemon, skew: int):
        with capture_logs() as logs:
            status, body = await daemon.post(event_body(), timestamp=NOW + skew)
        assert status == 401
        assert body == {"error": "unauthorized"}
        assert logs[-1]["reason"] == "stale"

    @pytest.mark.parametrize("skew", [-299, 299])
    async def test_timestamp_inside_tolerance_is_accepted(self, daemon: Daemon, skew: int):
        assert (await daemon.post(event_body(), timestamp=NOW + skew))[0] == 202

    async def test_missing_headers_are_401(self, daemon: Daemon):
        with capture_logs() as logs:
            status, _ = await daemon.post(
                event_body(), headers={"Content-Type": "application/json"}
            )
        assert status == 401
        assert logs[-1]["reason"] == "missing_timestamp"

    async def test_signature_is_checked_before_content_type_and_json(self, daemon: Daemon):
        headers = signed_headers(
            b"not json", secret="forged", timestamp=NOW, content_type="text/plain"
        )
        assert (await daemon.post(b"not json", headers=headers))[0] == 401


class TestMalformed:
    async def test_non_json_content_type_is_415(self, daemon: Daemon):
        raw = event_body()
        headers = signed_headers(raw, timestamp=NOW, content_type="text/plain")
        status, body = await daemon.post(raw, headers=headers)
        assert status == 415
        assert body["error"] == "unsupported_media_type"
        assert "text/plain" in str(body["detail"])

    async def test_body_that_is_not_json_is_400(self, daemon: Daemon):
        status, body = await daemon.post(b"type=file.ready")
        assert status == 400
        assert body["error"] == "not_json"

    async def test_json_that_is_not_an_object_is_400(self, daemon: Daemon):
        status, body = await daemon.post(b'["file.ready"]')
        assert status == 400
        assert body["error"] == "not_object"

    async def test_object_without_type_is_422(self, daemon: Daemon):
        with capture_logs() as logs:
            status, body = await daemon.post(b'{"resource": {"id": "r1"}}')
        assert status == 422
        assert body["error"] == "invalid_event"
        assert "type" in str(body["detail"])
        assert logs[-1]["outcome"] == "malformed"


class TestUnavailable:
    async def test_full_disk_is_503_with_retry_after_and_recovers_when_space_returns(
        self, daemon: Daemon
    ):
        def cap(conn: sqlite3.Connection, pages: int | None = None) -> int:
            if pages is None:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
            return conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0]

        # No room beyond the pages the file has now: as good as a full disk.
        await daemon.spool.run(cap)
        statuses = []
        with capture_logs() as logs:
            for n in range(200):
                status, body = await daemon.post(event_body(padding="x" * 2000, n=n))
                statuses.append(status)
                if status == 503:
                    break
        assert statuses[-1] == 503, "the spool never filled up"
        assert set(statuses[:-1]) <= {202}
        assert body == {"error": "spool_full", "detail": "the spool's disk is full"}
        assert logs[-1]["reason"] == "spool_full"
        assert logs[-1]["outcome"] == "unavailable"
        metrics = await daemon.scrape()
        key = (
            "frameiod_deliveries_received_total",
            (("outcome", "unavailable"), ("source", "default")),
        )
        assert metrics[key] == 1

        await daemon.spool.run(lambda conn: cap(conn, 1_000_000))
        status, body = await daemon.post(event_body(padding="x" * 2000, n="after"))
        assert status == 202
        await daemon.spooled(str(body["id"]))

    async def test_retry_after_header_on_503(self, daemon: Daemon):
        await daemon.spool.close()
        response = await daemon.client.post(
            "/webhooks/default",
            data=event_body(),
            headers=signed_headers(event_body(), timestamp=NOW),
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"] == "spool_closed"

    async def test_stopping_daemon_refuses_with_503_and_is_not_ready(self, daemon: Daemon):
        assert (await daemon.client.get("/readyz")).status == 200
        daemon.receiver.stop_accepting()
        status, body = await daemon.post(event_body())
        assert (status, body["error"]) == (503, "shutting_down")
        readyz = await daemon.client.get("/readyz")
        assert readyz.status == 503
        assert (await readyz.json())["status"] == "stopping"
        assert (await daemon.client.get("/healthz")).status == 200


class TestProbes:
    async def test_readyz_is_503_until_started(self, config: Config, tmp_path: Path):
        """Before the application has run its start-up, the probe says so."""
        spool = await Spool.open(tmp_path / "unstarted.db")
        try:
            app = receiver_app(config, spool=spool, metrics=Metrics(config.sources, __version__))
            response = await readyz(make_mocked_request("GET", "/readyz", app=app))
        finally:
            await spool.close()
        assert response.status == 503
        assert json.loads(response.text or "")["status"] == "starting"

    async def test_readyz_is_503_naming_a_closed_spool_logged_once_for_many_probes(
        self, daemon: Daemon
    ):
        assert (await daemon.client.get("/readyz")).status == 200
        await daemon.spool.close()
        with capture_logs() as logs:
            answers = [await daemon.client.get("/readyz") for _ in range(3)]
        assert [a.status for a in answers] == [503] * 3
        assert await answers[0].json() == {
            "status": "spool_unavailable",
            "reason": "spool_closed",
            "detail": "the spool is closed",
        }
        warnings = [line for line in logs if line["event"] == "spool not ready"]
        assert len(warnings) == 1
        assert warnings[0]["reason"] == "spool_closed"
        assert warnings[0]["spool"] == str(daemon.spool.path)

    async def test_readyz_logs_an_outage_once_its_end_once_and_the_next_outage_again(
        self, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
    ):
        fails = [True, True, False, False, True]

        async def check() -> None:
            if fails.pop(0):
                raise SpoolUnavailable("spool_busy", "the spool is locked")

        monkeypatch.setattr(daemon.spool, "check", check)
        with capture_logs() as logs:
            statuses = [(await daemon.client.get("/readyz")).status for _ in range(5)]
        assert statuses == [503, 503, 200, 200, 503]
        events = [line["event"] for line in logs if line["event"].startswith("spool")]
        assert events == ["spool not ready", "spool ready again", "spool not ready"]

    async def test_readyz_is_503_when_the_spools_writer_has_stopped(self, daemon: Daemon):
        writer = daemon.spool._writer
        writer.stop()
        await asyncio.to_thread(writer.join, 5)
        response = await daemon.client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["reason"] == "spool_error"

    async def test_healthz_is_200(self, daemon: Daemon):
        response = await daemon.client.get("/healthz")
        assert (response.status, await response.json()) == (200, {"status": "ok"})


class TestMetrics:
    async def test_counters_match_a_scripted_mix_of_requests(self, daemon: Daemon):
        before = await daemon.scrape()
        key = "frameiod_deliveries_received_total"
        assert before[(key, (("outcome", "stale"), ("source", "default")))] == 0
        assert before[(key, (("outcome", "unknown_source"), ("source", "unknown")))] == 0

        for _ in range(3):
            await daemon.post(event_body())
        await daemon.post(event_body(), secret="forged")
        await daemon.post(event_body(), timestamp=NOW - 1000)
        await daemon.post(b"{}")
        await daemon.post(b"x" * 5000)
        await daemon.post(event_body(), source="attacker-chosen-name")

        after = await daemon.scrape()

        def count(outcome: str, source: str = "default") -> float:
            return after[(key, (("outcome", outcome), ("source", source)))]

        assert count("accepted") == 3
        assert count("bad_signature") == 1
        assert count("stale") == 1
        assert count("malformed") == 1
        assert count("too_large") == 1
        assert count("unknown_source", "unknown") == 1
        assert not any("attacker-chosen-name" in str(labels) for _, labels in after)
        assert after[("frameiod_ack_seconds_count", ())] == 8
        assert after[("frameiod_build_info", (("version", __version__),))] == 1


class TestDuplicates:
    @pytest.fixture
    def routes(self) -> Routes:
        async def handle(event: object) -> None: ...

        return Routes([WebhookHandler(func=handle, event_types=("*",), name="h", plugin="p")])

    async def test_the_same_signed_request_again_is_a_duplicate_of_the_first(self, daemon: Daemon):
        raw = event_body()
        headers = signed_headers(raw, timestamp=NOW - 10)
        first = await daemon.post(raw, headers=headers)
        with capture_logs() as logs:
            again = await daemon.post(raw, headers=headers)
        assert first[0] == 202
        assert again == (200, {"status": "duplicate", "id": first[1]["id"]})
        assert logs[-1]["outcome"] == "duplicate"
        metrics = await daemon.scrape()
        key = (
            "frameiod_deliveries_received_total",
            (("outcome", "duplicate"), ("source", "default")),
        )
        assert metrics[key] == 1

    async def test_an_identical_body_still_pending_is_coalesced(self, daemon: Daemon):
        raw = event_body()
        first = await daemon.post(raw)
        resent = await daemon.post(raw)  # a new timestamp: Frame.io's retry, say
        assert resent == (200, {"status": "duplicate", "id": first[1]["id"]})
        rows = await daemon.spool.deliveries_of(str(first[1]["id"]))
        assert [(r["handler"], r["state"]) for r in rows] == [("p:h", "pending")]

    async def test_an_identical_body_after_processing_is_a_new_event(self, daemon: Daemon):
        raw = event_body()
        first = await daemon.post(raw)
        (delivery,) = await daemon.spool.deliveries_of(str(first[1]["id"]))
        await daemon.spool.finish(delivery["id"], outcome="ok", seconds=0.1, error=None)
        later = await daemon.post(raw)
        assert later[0] == 202
        assert later[1]["id"] != first[1]["id"]
        assert len(await daemon.spool.deliveries_of(str(later[1]["id"]))) == 1

    async def test_the_same_body_from_another_source_is_not_coalesced(self, daemon: Daemon):
        raw = event_body()
        first = await daemon.post(raw)
        second = await daemon.post(raw, secret="other-secret")
        assert first[0] == 202
        assert second[0] == 401  # and with a valid other source it would be its own event


class TestOutsideTheRoutes:
    async def test_get_root_says_what_is_listening(self, daemon: Daemon):
        answer = await daemon.client.get("/")
        assert answer.status == 200
        assert await answer.json() == {
            "name": "frameiod",
            "version": __version__,
            "links": {"healthz": "/healthz", "readyz": "/readyz"},
        }

    async def test_an_unknown_path_is_a_json_404(self, daemon: Daemon):
        answer = await daemon.client.post("/webhook/default", data=event_body())
        assert (answer.status, answer.content_type) == (404, "application/json")
        assert await answer.json() == {"error": "not_found", "path": "/webhook/default"}

    async def test_a_wrong_method_is_a_json_405_naming_the_right_one(self, daemon: Daemon):
        answer = await daemon.client.get("/webhooks/default")
        assert (answer.status, answer.content_type) == (405, "application/json")
        assert await answer.json() == {"error": "method_not_allowed", "allowed": ["POST"]}
        assert answer.headers["Allow"] == "POST"
        answer = await daemon.client.post("/healthz")
        assert (answer.status, (await answer.json())["allowed"]) == (405, ["GET", "HEAD"])

    async def test_what_no_route_serves_is_logged_and_counted(self, daemon: Daemon):
        """A webhook registered at a wrong URL fails at every retry: the operator must see it."""
        with capture_logs() as logs:
            slash = await daemon.client.post("/webhooks/default/", data=event_body())
            method = await daemon.client.put("/webhooks/default", data=event_body())
            scan = await daemon.client.get("/wp-login.php")
        assert (slash.status, method.status, scan.status) == (404, 405, 404)
        lines = [e for e in logs if e["event"] == "request matched no route"]
        assert [(e["log_level"], e["method"], e["path"], e["status"]) for e in lines] == [
            ("warning", "POST", "/webhooks/default/", 404),
            ("warning", "PUT", "/webhooks/default", 405),
            ("info", "GET", "/wp-login.php", 404),
        ]
        assert "without a trailing slash" in lines[0]["hint"]
        assert "hint" not in lines[2]
        assert lines[0]["remote"] == "127.0.0.1"
        metrics = await daemon.scrape()
        assert metrics[("frameiod_unrouted_requests_total", (("status", "404"),))] == 2
        assert metrics[("frameiod_unrouted_requests_total", (("status", "405"),))] == 1

    async def test_the_webhook_route_still_takes_its_requests(self, daemon: Daemon):
        status, body = await daemon.post(event_body())
        assert (status, body["status"]) == (202, "accepted")
