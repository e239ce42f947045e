"""The Frame.io API client: tokens, server-to-server auth, retries, lifecycle.

A small local HTTP server answers like Frame.io's API (and like Adobe IMS for tokens);
the real ``frameio`` SDK talks to it through ``[frameio] base_url``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from frameio import CreateCommentParamsData

from frameiod import App, NoClientError, WebhookEvent
from frameiod.config import ConfigError
from frameiod.testing import RunningDaemon, run_daemon


class FakeFrameio:
    """Answers like Frame.io's comments endpoint and Adobe IMS's token endpoint."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, str]] = []
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.url = ""

    async def comment(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "body": await request.json(),
            }
        )
        if self.fail_next:
            status, headers = self.fail_next.pop(0)
            return web.json_response(
                {"errors": [{"detail": "try later"}]}, status=status, headers=headers
            )
        text = (await request.json())["data"]["text"]
        return web.json_response({"data": {"id": f"c{len(self.requests)}", "text": text}})

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(await request.post()))
        return web.json_response({"access_token": "ims-access-token", "expires_in": 3600})


@pytest.fixture
async def frameio() -> AsyncIterator[FakeFrameio]:
    fake = FakeFrameio()
    app = web.Application()
    app.router.add_post("/v4/accounts/{account}/files/{file}/comments", fake.comment)
    app.router.add_post("/ims/token/v3", fake.token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


def commenter(app: App | None = None) -> App:
    app = app or App()

    @app.on_webhook("file.ready")
    async def comment(event: WebhookEvent) -> None:
        await app.client.comments.create(
            event.account_id, event.resource_id, data=CreateCommentParamsData(text="Ready")
        )

    return app


FAST = '[dispatch]\nbackoff_initial = "10ms"\nbackoff_max = "20ms"\n'


async def _send(daemon: RunningDaemon) -> list[Any]:
    sent = await daemon.send(
        "file.ready", account={"id": "acc-1"}, resource={"id": "file-1", "type": "file"}, wait=False
    )
    return await daemon.wait_for(sent.id, settled=True)


class TestAuthentication:
    async def test_a_static_token_is_sent_as_the_bearer(self, frameio: FakeFrameio):
        settings = f'[frameio]\ntoken = "static-token"\nbase_url = "{frameio.url}"\n'
        async with run_daemon({"c": commenter()}, settings=settings) as daemon:
            outcomes = await _send(daemon)
        assert [o.status for o in outcomes] == ["ok"]
        assert frameio.requests == [
            {
                "path": "/v4/accounts/acc-1/files/file-1/comments",
                "authorization": "Bearer static-token",
                "body": {"data": {"text": "Ready"}},
            }
        ]

    async def test_server_to_server_credentials_fetch_a_real_token_from_ims(
        self, frameio: FakeFrameio, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setenv("FRAMEIO_CLIENT_SECRET", "s2s-secret")
        settings = f"""
[frameio]
base_url = "{frameio.url}"
[frameio.oauth]
client_id = "my-client"
client_secret = "env:FRAMEIO_CLIENT_SECRET"
ims_base_url = "{frameio.url}"
"""
        async with run_daemon({"c": commenter()}, settings=settings) as daemon:
            outcomes = await _send(daemon)
        assert [o.status for o in outcomes] == ["ok"]
        # The bearer is the token IMS issued, not the repr of a coroutine.
        assert frameio.requests[0]["authorization"] == "Bearer ims-access-token"
        assert frameio.token_requests == [
            {
                "grant_type": "client_credentials",
                "client_id": "my-client",
                "client_secret": "s2s-secret",
                "scope": "openid AdobeID frame.s2s.all",
            }
        ]

    async def test_an_app_with_its_own_token_uses_it(self, frameio: FakeFrameio):
        settings = f'[frameio]\ntoken = "shared-token"\nbase_url = "{frameio.url}"\n'
        plugins = {"own": commenter(App(token="app-token")), "shared": commenter()}
        async with run_daemon(plugins, settings=settings) as daemon:
            await _send(daemon)
        assert sorted(r["authorization"] for r in frameio.requests) == [
            "Bearer app-token",
            "Bearer shared-token",
        ]

    async def test_without_credentials_the_client_says_what_to_configure(self):
        app = commenter()
        async with run_daemon({"c": app}, settings=FAST + "max_attempts = 1\n") as daemon:
            outcomes = await _send(daemon)
        assert outcomes[0].status == "dead"
        assert "set [frameio] token" in str(outcomes[0].error)
        with pytest.raises(NoClientError):
            _ = app.client

    async def test_token_and_oauth_together_are_a_config_error(self):
        settings = """
[frameio]
token = "t"
[frameio.oauth]
client_id = "c"
client_secret = "s"
"""
        with pytest.raises(ConfigError) as error:
            async with run_daemon({}, settings=settings):
                pass
        assert error.value.problems[0].endswith(
            "config.toml: frameio: set either token or [frameio.oauth], not both"
        )


class TestRetries:
    async def test_the_sdk_does_not_retry_a_failed_post_itself(self, frameio: FakeFrameio):
        """One handler attempt is one POST: a second comment can only come from frameiod's
        own retry of the whole handler, which the spool records."""
        frameio.fail_next = [(500, {})]
        settings = f'[frameio]\ntoken = "t"\nbase_url = "{frameio.url}"\n' + FAST
        async with run_daemon({"c": commenter()}, settings=settings) as daemon:
            outcomes = await _send(daemon)
            assert daemon.daemon.spool is not None
        assert [o.status for o in outcomes] == ["ok"]
        assert len(frameio.requests) == 2  # the 500, then frameiod's retry

    async def test_too_many_requests_waits_as_long_as_frameio_asks(self, frameio: FakeFrameio):
        frameio.fail_next = [(429, {"Retry-After": "30"})]
        settings = f'[frameio]\ntoken = "t"\nbase_url = "{frameio.url}"\n' + FAST
        async with run_daemon({"c": commenter()}, settings=settings) as daemon:
            sent = await daemon.send(
                "file.ready", account={"id": "a"}, resource={"id": "f", "type": "file"}, wait=False
            )
            first = await daemon.wait_for(sent.id)
            assert daemon.daemon.spool is not None
            (row,) = await daemon.daemon.spool.deliveries_of(sent.id)
        assert first[0].status == "error"
        assert "TooManyRequestsError" in str(first[0].error)
        assert row["state"] == "pending"
        # Not the 10 ms backoff: Frame.io asked for 30 s.
        assert row["next_attempt_at"] - time.time() > 25


class TestLifecycle:
    async def test_the_shared_client_is_closed_on_shutdown(self, frameio: FakeFrameio):
        settings = f'[frameio]\ntoken = "t"\nbase_url = "{frameio.url}"\n'
        async with run_daemon({"c": commenter()}, settings=settings) as daemon:
            client = daemon.daemon.client
            assert client is not None
            assert not client._http.is_closed
        assert client._http.is_closed
