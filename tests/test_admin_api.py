"""The admin listener's JSON API, through a real daemon on each spool backend: who may
call it, every route, pages while events arrive, replay and purge by ids and by filter,
and the same shapes whichever backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from admin_support import (
    FAILS,
    LOGS,
    TOKEN,
    Admin,
    Handlers,
    admin_daemon,
    admin_table,
    spool_table,
)
from redis_support import RedisServer
from store_contract import LIST_KEYS

from frameiod.store.operator import public_id
from frameiod.testing import TEST_SECRET, RunningDaemon


@pytest.fixture(params=["sqlite", "redis"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
    return spool_table(request.param, tmp_path, server)


async def _dead_letter(daemon: RunningDaemon, **fields: Any) -> str:
    """Send a file.ready that ``fails`` turns into a dead letter (``logs`` does it);
    return the event id."""
    sent = await daemon.send("file.ready", **fields)
    assert sent.status == 202
    await daemon.wait_for(sent.body["id"], settled=True)
    return str(sent.body["id"])


async def _delivery(admin: Admin, event_id: str, handler: str) -> dict[str, Any]:
    page = await admin.get(f"/api/deliveries?handler={handler}&limit=500")
    [item] = [item for item in page["items"] if item["event_id"] == event_id]
    return item


class TestWhoMayCall:
    async def test_no_token_a_wrong_one_and_the_right_one(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            status, body = await admin.call("GET", "/api/stats", token=None)
            assert (status, body) == (401, {"error": "unauthorized"})
            status, body = await admin.call("GET", "/api/stats", token=TOKEN[:-1] + "X")
            assert (status, body) == (401, {"error": "unauthorized"})
            bare = {"Authorization": TOKEN}
            status, _ = await admin.call("GET", "/api/stats", token=None, headers=bare)
            assert status == 401, "the token without its Bearer scheme"
            assert (await admin.call("GET", "/api/stats"))[0] == 200
            metrics = await daemon.metrics()
            refused = metrics[
                ("frameiod_unauthenticated_rejected_total", (("reason", "admin_token"),))
            ]
            assert refused == 3

    async def test_refusals_spend_the_budget_the_webhook_listener_keeps(self, tmp_path: Path):
        spool = spool_table("sqlite", tmp_path, None)
        server = "unauthenticated_failures = 3"
        async with admin_daemon(tmp_path, spool, Handlers(), server=server) as (daemon, admin):
            for _ in range(3):
                assert (await admin.call("GET", "/api/stats", token="wrong"))[0] == 401
            # Spent: the right token waits too, and so do webhooks from the same address.
            status, body = await admin.call("GET", "/api/stats")
            assert (status, body["error"]) == (429, "rate_limited")
            status, _ = await daemon.post(b"{}")
            assert status == 429

    async def test_the_api_is_not_on_the_webhook_port_nor_the_page_on_it(
        self, tmp_path: Path, spool: str
    ):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with admin.session.get(daemon.url("/api/stats"), headers=headers) as answer:
                assert answer.status == 404
            assert daemon.daemon.admin_port != daemon.port
            assert "deliveries" in await admin.get("/api/stats"), "it is on its own port"

    async def test_a_new_token_applies_on_reload(self, tmp_path: Path):
        spool = spool_table("sqlite", tmp_path, None)
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            config = daemon.daemon.config.path
            new = "another-admin-token-0123456789abcdef"
            config.write_text(config.read_text().replace(TOKEN, new))
            assert await daemon.daemon.reload()
            assert (await admin.call("GET", "/api/stats"))[0] == 401
            assert (await admin.call("GET", "/api/stats", token=new))[0] == 200


class TestRoutes:
    async def test_stats_count_per_state_source_and_handler(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            await _dead_letter(daemon)
            stats = await admin.get("/api/stats")
            assert stats["deliveries"] == {"pending": 0, "running": 0, "done": 1, "dead": 1}
            assert stats["sources"] == {"default": stats["deliveries"]}
            assert stats["handlers"][FAILS]["dead"] == 1
            assert stats["handlers"][LOGS]["done"] == 1
            assert stats["dead_letters"] == {FAILS: 1}
            assert stats["oldest_pending_seconds"] is None
            assert stats["events"] == 1

    async def test_list_filters_and_one_delivery_without_secrets(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            event_id = await _dead_letter(daemon, resource={"id": "f-1", "type": "file"})
            page = await admin.get("/api/deliveries?state=dead")
            [item] = page["items"]
            assert set(item) == LIST_KEYS
            assert (item["event_id"], item["handler"], item["state"]) == (event_id, FAILS, "dead")
            assert len(item["last_error"]) == 300, "cut in lists"
            assert page["cursor"] is None
            assert item["id"].replace("-", "").replace("_", "").isalnum(), "URL-safe"
            for query, count in [
                (f"handler={LOGS}", 1),
                ("source=default", 2),
                ("source=other", 0),
                ("event_type=file.ready", 2),
                ("event_type=comment.created", 0),
                ("state=done&handler=p:fails", 0),
            ]:
                assert len((await admin.get(f"/api/deliveries?{query}"))["items"]) == count, query

            one = await admin.get(f"/api/deliveries/{item['id']}")
            assert (one["id"], one["state"], one["handler"]) == (item["id"], "dead", FAILS)
            assert one["last_error"].endswith("x" * 400), "whole on its own page"
            assert one["event"]["payload"]["resource"] == {"id": "f-1", "type": "file"}
            assert set(one["event"]["headers"]) == {"X-Frameio-Request-Timestamp"}
            assert [a["outcome"] for a in one["attempts"]] == ["error"]
            assert [s["handler"] for s in one["siblings"]] == [LOGS]
            text = json.dumps(one)
            for secret in (TEST_SECRET, TOKEN, "v0=", "signature"):
                assert secret not in text

    async def test_unknown_things_are_json_errors(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (_, admin):
            cases = [
                ("GET", "/api/deliveries/" + public_id("no such"), None, 404, "not_found"),
                ("GET", "/api/deliveries/%%%", None, 404, "not_found"),
                ("GET", "/api/deliveries?state=sleeping", None, 400, "bad_filter"),
                ("GET", "/api/deliveries?colour=red", None, 400, "bad_query"),
                ("GET", "/api/deliveries?limit=0", None, 400, "bad_limit"),
                ("GET", "/api/deliveries?limit=ten", None, 400, "bad_limit"),
                ("GET", "/api/deliveries?cursor=bm90IGEgY3Vyc29y", None, 400, "bad_cursor"),
                ("GET", "/api/nothing", None, 404, "not_found"),
                ("GET", "/api/deliveries/replay", None, 404, "not_found"),
                ("PUT", "/api/stats", None, 405, "method_not_allowed"),
                ("POST", "/api/deliveries/replay", {}, 400, "nothing_named"),
                ("POST", "/api/deliveries/replay", [1], 400, "malformed"),
                ("POST", "/api/deliveries/replay", {"ids": "x"}, 400, "bad_ids"),
                ("POST", "/api/deliveries/purge", {"ids": [], "state": "dead"}, 400, "bad_request"),
                ("POST", "/api/deliveries/purge", {"state": "done"}, 400, "bad_filter"),
            ]
            for method, path, body, status, word in cases:
                got, answer = await admin.call(method, path, body=body)
                assert (got, answer["error"]) == (status, word), (method, path, body, answer)


class TestPages:
    async def test_pages_go_on_where_they_ended_while_events_arrive(
        self, tmp_path: Path, spool: str
    ):
        handlers = Handlers(failing=False)
        async with admin_daemon(tmp_path, spool, handlers) as (daemon, admin):
            first = [(await daemon.send("file.ready")).body["id"] for _ in range(5)]
            page = await admin.get(f"/api/deliveries?handler={FAILS}&limit=2")
            seen = [item["event_id"] for item in page["items"]]
            for _ in range(3):  # newer than every page: they must not shift the next ones
                await daemon.send("file.ready")
            while page["cursor"]:
                page = await admin.get(
                    f"/api/deliveries?handler={FAILS}&limit=2&cursor={page['cursor']}"
                )
                seen += [item["event_id"] for item in page["items"]]
            assert seen == first[::-1]
            # Both handlers of an event, across a page boundary inside that event.
            page = await admin.get("/api/deliveries?event_type=file.ready&limit=3")
            ids = [item["id"] for item in page["items"]]
            page = await admin.get(
                f"/api/deliveries?event_type=file.ready&limit=3&cursor={page['cursor']}"
            )
            ids += [item["id"] for item in page["items"]]
            assert len(set(ids)) == 6
            everything = await admin.get("/api/deliveries?event_type=file.ready&limit=6")
            assert ids == [item["id"] for item in everything["items"]]

    async def test_dead_letters_page_newest_first(self, tmp_path: Path, spool: str):
        handlers = Handlers()
        async with admin_daemon(tmp_path, spool, handlers) as (daemon, admin):
            events = [await _dead_letter(daemon) for _ in range(3)]
            handlers.failing = False
            done = await daemon.send("file.ready")  # settled and done: never listed here
            await daemon.wait_for(done.body["id"], settled=True)
            seen, cursor = [], ""
            while cursor is not None and len(seen) < 10:
                page = await admin.get(f"/api/deliveries?state=dead&limit=1&cursor={cursor}")
                seen += [(item["event_id"], item["state"]) for item in page["items"]]
                cursor = page["cursor"]
            assert seen == [(event_id, "dead") for event_id in events[::-1]]


class TestReplayAndPurge:
    async def test_replay_by_ids_reports_running_and_unknown_ones(self, tmp_path: Path, spool: str):
        handlers = Handlers()
        async with admin_daemon(tmp_path, spool, handlers) as (daemon, admin):
            dead_event = await _dead_letter(daemon)
            dead = await _delivery(admin, dead_event, FAILS)
            done = await _delivery(admin, dead_event, LOGS)
            await daemon.send("comment.created", wait=False)
            await asyncio.wait_for(handlers.started.wait(), 10)
            [running] = (await admin.get("/api/deliveries?state=running"))["items"]
            handlers.failing = False
            missing = public_id("no such delivery")
            answer = await admin.post(
                "/api/deliveries/replay",
                {"ids": [dead["id"], running["id"], done["id"], missing, "!!"]},
            )
            assert answer["replayed"] == 1
            assert [(r["id"], r["state"]) for r in answer["refused"]] == [
                (running["id"], "running"),
                (done["id"], "done"),
            ]
            assert "being delivered" in answer["refused"][0]["reason"]
            assert answer["unknown"] == [missing, "!!"]
            await daemon.wait_for(dead_event, settled=True)
            assert (await admin.get(f"/api/deliveries/{dead['id']}"))["state"] == "done"
            handlers.release.set()

    async def test_replay_and_purge_by_filter(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            events = [await _dead_letter(daemon) for _ in range(3)]
            other = await _dead_letter(daemon, type="file.ready")
            assert other not in events
            answer = await admin.post("/api/deliveries/purge", {"state": "dead", "handler": LOGS})
            assert answer == {"purged": 0}
            answer = await admin.post("/api/deliveries/replay", {"state": "dead", "handler": FAILS})
            assert answer == {"replayed": 4}
            for event_id in [*events, other]:
                await daemon.wait_for(event_id, settled=True)
            assert (await admin.get("/api/stats"))["deliveries"]["dead"] == 4, "failed again"
            answer = await admin.post("/api/deliveries/purge", {"event_type": "file.ready"})
            assert answer == {"purged": 4}
            stats = await admin.get("/api/stats")
            assert stats["deliveries"] == {"pending": 0, "running": 0, "done": 4, "dead": 0}

    async def test_purge_by_ids(self, tmp_path: Path, spool: str):
        async with admin_daemon(tmp_path, spool, Handlers()) as (daemon, admin):
            event_id = await _dead_letter(daemon)
            dead = await _delivery(admin, event_id, FAILS)
            done = await _delivery(admin, event_id, LOGS)
            answer = await admin.post("/api/deliveries/purge", {"ids": [dead["id"], done["id"]]})
            assert answer["purged"] == 1
            assert [(r["id"], r["state"]) for r in answer["refused"]] == [(done["id"], "done")]
            assert (await admin.call("GET", f"/api/deliveries/{dead['id']}"))[0] == 404
            again = await admin.post("/api/deliveries/purge", {"ids": [dead["id"]]})
            assert again == {"purged": 0, "unknown": [dead["id"]]}


def _shape(value: Any) -> Any:
    """A JSON value's structure: keys and types, not values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return value
    return type(value).__name__.replace("int", "number").replace("float", "number")


async def test_both_backends_answer_in_the_same_shapes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    shapes = []
    for kind in ("sqlite", "redis"):
        (tmp_path / kind).mkdir()
        spool = spool_table(kind, tmp_path / kind, redis_server)
        async with admin_daemon(tmp_path / kind, spool, Handlers()) as (daemon, admin):
            event_id = await _dead_letter(daemon)
            dead = await _delivery(admin, event_id, FAILS)
            answers = [
                await admin.get("/api/stats"),
                await admin.get("/api/deliveries?limit=1"),
                await admin.get(f"/api/deliveries/{dead['id']}"),
                await admin.post("/api/deliveries/replay", {"ids": [dead["id"], "nope"]}),
            ]
            answers[0]["oldest_pending_seconds"] = None
            shapes.append(_shape(answers))
    assert shapes[0] == shapes[1]


async def test_metrics_move_to_the_admin_listener(tmp_path: Path) -> None:
    spool = spool_table("sqlite", tmp_path, None)
    admin_on = admin_table(metrics=True)
    async with admin_daemon(tmp_path, spool, Handlers(), admin=admin_on) as (daemon, admin):
        async with admin.session.get(daemon.url("/metrics")) as public:
            assert public.status == 404
        async with admin.session.get(admin.url("/metrics")) as private:
            assert private.status == 200
            assert "frameiod_build_info" in await private.text()
