"""The hooks around each call (frameiod_call_handler, frameiod_call_action,
frameiod_receive) and App(middleware=[...]) built on them, on a real daemon."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Generator
from typing import Any

from structlog.testing import capture_logs

from frameiod import (
    ActionEvent,
    App,
    HandlerTimeout,
    Message,
    Middleware,
    Reception,
    WebhookEvent,
    WebhookHandler,
    hookimpl,
)
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.testing import config_toml, run_daemon

FAST = 'backoff_initial = "10ms"\nbackoff_max = "20ms"\nmax_attempts = 3\nhandler_timeout = "300ms"'
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


def fast(settings: str = "") -> str:
    return config_toml(dispatch=FAST, extra=settings)


class Wrapper:
    """Wraps every handler call; records what it saw, in ``log`` (shared between two)."""

    def __init__(self, name: str, log: list[Any], *, fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    @hookimpl(wrapper=True)
    def frameiod_call_handler(
        self, event: WebhookEvent, handler: WebhookHandler, attempt: int
    ) -> Generator[None, Any, Any]:
        call = yield

        async def around() -> Any:
            self.log.append((self.name, "enter", attempt))
            token = SEEN.set(self.name)
            try:
                result = await call
            except Exception as exc:
                self.log.append((self.name, "raised", type(exc).__name__))
                raise
            finally:
                SEEN.reset(token)
            self.log.append((self.name, "result", result))
            if self.fail:
                raise RuntimeError(f"{self.name} broke")
            return result

        return around()


def flaky_app(calls: list[str], *, sync: bool = False) -> App:
    """A handler that fails its first call and succeeds after; notes the context it ran in."""
    app = App()

    def body(event: WebhookEvent) -> str:
        calls.append(SEEN.get())
        if len(calls) == 1:
            raise ValueError("first call fails")
        return "done"

    if sync:

        @app.on_webhook("file.ready")
        def handle_sync(event: WebhookEvent) -> str:
            return body(event)

    else:

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> str:
            return body(event)

    return app


class TestWrappingHandlerCalls:
    async def test_two_wrappers_nest_the_last_registered_outermost_and_see_each_attempt(self):
        log: list[Any] = []
        calls: list[str] = []
        plugins = {"app": flaky_app(calls), "a": Wrapper("a", log), "b": Wrapper("b", log)}
        async with run_daemon(plugins, config_text=fast()) as daemon:
            sent = await daemon.send("file.ready", wait=False)
            assert sent.id is not None
            outcomes = await daemon.wait_for(sent.id, settled=True)
        assert [o.status for o in outcomes] == ["ok"]
        assert log == [
            ("b", "enter", 1),
            ("a", "enter", 1),
            ("a", "raised", "ValueError"),
            ("b", "raised", "ValueError"),
            ("b", "enter", 2),
            ("a", "enter", 2),
            ("a", "result", "done"),
            ("b", "result", "done"),
        ]
        assert calls == ["a", "a"]  # the handler runs inside the innermost wrapper's context

    async def test_a_plain_handler_is_wrapped_too_and_runs_in_the_wrappers_context(self):
        log: list[Any] = []
        calls: list[str] = []
        plugins = {"app": flaky_app(calls, sync=True), "a": Wrapper("a", log)}
        async with run_daemon(plugins, config_text=fast()) as daemon:
            sent = await daemon.send("file.ready", wait=False)
            assert sent.id is not None
            outcomes = await daemon.wait_for(sent.id, settled=True)
        assert [o.status for o in outcomes] == ["ok"]
        assert [entry[1] for entry in log] == ["enter", "raised", "enter", "result"]
        assert calls == ["a", "a"]

    async def test_a_failing_wrapper_fails_the_delivery_which_is_retried_and_its_plugin_logged(
        self,
    ):
        log: list[Any] = []
        app = App()
        runs: list[int] = []

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            runs.append(1)

        plugins = {"app": app, "broken": Wrapper("broken", log, fail=True)}
        with capture_logs() as logs:
            async with run_daemon(plugins, config_text=fast()) as daemon:
                sent = await daemon.send("file.ready", wait=False)
                assert sent.id is not None
                outcomes = await daemon.wait_for(sent.id, settled=True)
        assert [o.status for o in outcomes] == ["dead"]
        assert outcomes[0].error == "RuntimeError: broken broke"
        assert len(runs) == 3  # every attempt ran the handler; the wrapper failed each
        blamed = [line for line in logs if line["event"] == "handler wrapper failed"]
        assert [line["plugin"] for line in blamed] == ["broken"] * 3
        assert blamed[0]["handler"] == "app:handle"

    async def test_a_wrapper_failing_in_a_helper_class_is_named_by_its_package(self):
        class Helper:
            async def run(self, call: Any) -> Any:
                await call
                raise RuntimeError("helper broke")

        class Delegating:
            @hookimpl(wrapper=True)
            def frameiod_call_handler(self) -> Generator[None, Any, Any]:
                return Helper().run((yield))

        app = App()

        @app.on_webhook("file.ready", max_attempts=1)
        async def handle(event: WebhookEvent) -> None:
            pass

        with capture_logs() as logs:
            async with run_daemon({"app": app, "helped": Delegating()}) as daemon:
                sent = await daemon.send("file.ready")
        assert [o.status for o in sent.outcomes] == ["dead"]
        blamed = [line for line in logs if line["event"] == "handler wrapper failed"]
        assert [line["plugin"] for line in blamed] == ["helped"]

    async def test_a_handler_past_its_timeout_raises_handler_timeout_in_the_wrapper(self):
        log: list[Any] = []
        app = App()

        @app.on_webhook("file.ready", max_attempts=1)
        async def slow(event: WebhookEvent) -> None:
            await asyncio.sleep(30)

        async with run_daemon({"app": app, "a": Wrapper("a", log)}, config_text=fast()) as daemon:
            sent = await daemon.send("file.ready", wait=False)
            assert sent.id is not None
            outcomes = await daemon.wait_for(sent.id, settled=True)
        assert [(o.status, o.error) for o in outcomes] == [("dead", "no answer within 0.3s")]
        assert log == [("a", "enter", 1), ("a", "raised", HandlerTimeout.__name__)]


class TestNothingWrapped:
    def test_without_wrappers_the_hooks_around_each_call_are_not_used(self):
        app = App()

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            pass

        host = PluginHost(make_plugin_manager(load_entrypoints=False))
        host.add(app, "app")
        assert host.around() is None
        assert host.plugins.keys() == {"app"}  # frameiod's own implementations are no plugin
        host.add(Wrapper("a", []), "a")
        around = host.around()
        assert around is not None
        assert around.wrapped == {
            "frameiod_call_handler": True,
            "frameiod_call_action": False,
            "frameiod_receive": False,
        }


class Order(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def on_webhook(self, event: WebhookEvent, next: Any) -> Any:
        self.log.append(f"{self.name} webhook {event.type}")
        try:
            return await next(event)
        finally:
            self.log.append(f"{self.name} done")

    async def on_action(self, event: ActionEvent, next: Any) -> Any:
        self.log.append(f"{self.name} action {event.type}")
        answer = await next(event)
        return Message(answer.title, f"{answer.description} via {self.name}")


class Gate(Middleware):
    """frameio-kit's shape: one __call__ for both kinds; refuses without calling next."""

    async def __call__(self, event: Any, next: Any) -> Any:
        if event.type == "file.deleted":
            return None
        return await next(event)


class TestAppMiddleware:
    async def test_middleware_wraps_the_apps_webhooks_and_actions_first_one_outermost(self):
        log: list[str] = []
        app = App(middleware=[Order("outer", log), Order("inner", log)])

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            log.append("handler")

        @app.on_action("acme.go")
        async def go(event: ActionEvent) -> Message:
            return Message("Done", "ran")

        other = App()

        @other.on_webhook("file.ready")
        async def elsewhere(event: WebhookEvent) -> None:
            log.append("other app's handler")

        async with run_daemon({"app": app, "other": other}) as daemon:
            sent = await daemon.send("file.ready")
            status, answer = await daemon.act("acme.go")
        assert sorted(o.status for o in sent.outcomes) == ["ok", "ok"]
        assert sorted(log) == sorted(
            [
                "outer webhook file.ready",
                "inner webhook file.ready",
                "handler",
                "inner done",
                "outer done",
                "other app's handler",
                "outer action acme.go",
                "inner action acme.go",
            ]
        )
        mine = [entry for entry in log if entry != "other app's handler"]
        assert mine[:5] == [
            "outer webhook file.ready",
            "inner webhook file.ready",
            "handler",
            "inner done",
            "outer done",
        ]
        assert (status, answer["description"]) == (200, "ran via inner via outer")

    async def test_a_middleware_that_does_not_call_next_keeps_even_a_plain_handler_from_running(
        self,
    ):
        ran: list[str] = []
        app = App(middleware=[Gate()])

        @app.on_webhook(["file.ready", "file.deleted"])
        def handle(event: WebhookEvent) -> None:
            ran.append(event.type)

        async with run_daemon({"app": app}) as daemon:
            refused = await daemon.send("file.deleted")
            passed = await daemon.send("file.ready")
        assert [o.status for o in refused.outcomes + passed.outcomes] == ["ok", "ok"]
        assert ran == ["file.ready"]

    async def test_a_failing_middleware_is_answered_as_a_failed_action_naming_the_plugin(self):
        class Broken(Middleware):
            async def on_action(self, event: ActionEvent, next: Any) -> Any:
                raise RuntimeError("middleware broke")

        app = App(middleware=[Broken()])

        @app.on_action("acme.go")
        async def go(event: ActionEvent) -> Message:
            return Message("Done", "ran")

        with capture_logs() as logs:
            async with run_daemon({"app": app}) as daemon:
                status, answer = await daemon.act("acme.go")
        assert (status, answer["title"]) == (200, "Something went wrong")
        [blamed] = [line for line in logs if line["event"] == "action wrapper failed"]
        assert (blamed["plugin"], blamed["action"]) == ("app", "acme.go")


class Receiving:
    """Wraps every receive: sets a trace context, and notes what the route made of it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str | None, bool]] = []
        self.ids: list[str | None] = []
        self.handed: list[str | None] = []

    @hookimpl(wrapper=True)
    def frameiod_receive(self, reception: Reception) -> Generator[None, Any, Any]:
        call = yield

        async def around() -> Any:
            reception.trace_context = TRACE
            response = await call
            event_type = reception.payload["type"] if reception.payload is not None else None
            self.seen.append((reception.kind, response.status, event_type, reception.duplicate))
            self.ids.append(reception.event_id)
            return response

        return around()

    @hookimpl(wrapper=True)
    def frameiod_call_handler(self, trace_context: str | None) -> Generator[None, Any, Any]:
        self.handed.append(trace_context)
        return (yield)


class TestWrappingTheReceive:
    async def test_the_trace_context_set_at_receive_reaches_the_handler_call(self):
        app = App()

        @app.on_webhook("file.ready")
        async def handle(event: WebhookEvent) -> None:
            pass

        @app.on_action("acme.go")
        async def go(event: ActionEvent) -> None:
            return None

        receiving = Receiving()
        async with run_daemon({"app": app, "rec": receiving}) as daemon:
            sent = await daemon.send("file.ready")
            status, _ = await daemon.act("acme.go")
            forged, _ = await daemon.post(b"{}", secret="not-the-secret")
        assert status == 200
        assert forged == 401
        assert [o.status for o in sent.outcomes] == ["ok"]
        assert receiving.seen == [
            ("webhook", 202, "file.ready", False),
            ("action", 200, "acme.go", False),
            ("webhook", 401, None, False),
        ]
        assert receiving.ids == [sent.id, None, None]
        assert receiving.handed == [TRACE]
