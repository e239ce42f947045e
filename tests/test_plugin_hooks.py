"""Hooks are called through pluggy: its order, its wrappers, blocked names, and every hook.

Plugins are defined in the test and registered on a fresh manager (`make_plugin_manager`
with ``load_entrypoints=False``); where the daemon matters, the real one runs through
`frameiod.testing.run_daemon`.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import Any

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from frameiod import (
    ActionEvent,
    ActionHandler,
    Message,
    Outcome,
    PluginContext,
    Reception,
    WebhookEvent,
    WebhookHandler,
    hookimpl,
)
from frameiod.plugins import hookspecs
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.testing import run_daemon

Calls = list[tuple[Any, ...]]


class Observer:
    """Observes both hooks: ``frameiod_event_accepted`` as ``def``, the other ``async``."""

    def __init__(self, calls: Calls, name: str) -> None:
        self.calls, self.name = calls, name

    def accepted(self, event: WebhookEvent, source: str) -> None:
        self.calls.append(("accepted", self.name))

    async def finished(self, event: WebhookEvent, handler: WebhookHandler, outcome: Any) -> None:
        self.calls.append(("finished", self.name))


def _observer(calls: Calls, name: str, **marks: bool) -> object:
    """An `Observer` whose two hooks carry ``marks`` (``tryfirst=True``, ...)."""

    class Marked(Observer):
        @hookimpl(**marks)
        def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> None:
            self.accepted(event, source)

        @hookimpl(**marks)
        async def frameiod_delivery_finished(
            self, event: WebhookEvent, handler: WebhookHandler, outcome: Any
        ) -> None:
            await self.finished(event, handler, outcome)

    return Marked(calls, name)


class Handles:
    """Offers one handler, so that a delivery happens and finishes."""

    @hookimpl
    def frameiod_webhook_handlers(self) -> list[WebhookHandler]:
        async def handle(event: WebhookEvent) -> None:
            pass

        return [WebhookHandler(func=handle, event_types=("file.ready",))]


class TestObserverOrder:
    async def test_tryfirst_runs_first_trylast_last_and_plain_ones_last_registered_first(self):
        calls: Calls = []
        # Registered so that neither registration order nor its reverse gives pluggy's order.
        plugins = {
            "first": _observer(calls, "first", tryfirst=True),
            "plain_a": _observer(calls, "plain_a"),
            "plain_b": _observer(calls, "plain_b"),
            "last": _observer(calls, "last", trylast=True),
            "handles": Handles(),
        }
        async with run_daemon(plugins) as daemon:
            sent = await daemon.send("file.ready")
        assert [o.status for o in sent.outcomes] == ["ok"]
        order = ["first", "plain_b", "plain_a", "last"]
        assert [name for hook, name in calls if hook == "accepted"] == order
        assert [name for hook, name in calls if hook == "finished"] == order


class Wrapper:
    """A new-style wrapper on both observer hooks: records each call and how it ended."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def _wrap(self, hook: str) -> Generator[None, Any, Any]:
        self.calls.append(("enter", hook))
        try:
            result = yield
        except Exception as exc:
            self.calls.append(("raised", hook, str(exc)))
            raise
        self.calls.append(("result", hook, result))
        return result

    @hookimpl(wrapper=True)
    def frameiod_event_accepted(
        self, event: WebhookEvent, source: str
    ) -> Generator[None, Any, Any]:
        return (yield from self._wrap("accepted"))

    @hookimpl(wrapper=True)
    def frameiod_delivery_finished(
        self, event: WebhookEvent, handler: WebhookHandler, outcome: Any
    ) -> Generator[None, Any, Any]:
        return (yield from self._wrap("finished"))


class Broken:
    """Observers that fail: ``def`` on acceptance, ``async def`` when a delivery ends."""

    @hookimpl
    def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> str:
        raise RuntimeError("sync observer bug")

    @hookimpl
    async def frameiod_delivery_finished(
        self, event: WebhookEvent, handler: WebhookHandler, outcome: Any
    ) -> None:
        raise RuntimeError("async observer bug")


class Answers:
    """A ``def`` observer that returns a value (ignored by the host, seen by wrappers)."""

    @hookimpl
    def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> str:
        return f"seen {source}"


class TestWrappers:
    async def test_a_wrapper_sees_each_call_and_its_result_or_exception(self):
        calls: Calls = []
        plugins = {"wrapper": Wrapper(calls), "broken": Broken(), "answers": Answers()}
        async with run_daemon({**plugins, "handles": Handles()}) as daemon:
            await daemon.send("file.ready")
        accepted = [c for c in calls if c[1] == "accepted"]
        # pluggy's order: "answers" (registered last) first, then "broken".
        assert accepted == [
            ("enter", "accepted"),
            ("result", "accepted", ["seen default"]),
            ("enter", "accepted"),
            ("raised", "accepted", "sync observer bug"),
        ]
        finished = [c for c in calls if c[1] == "finished"]
        assert [c[0] for c in finished] == ["enter", "result"]
        # Around an async def implementation, the call's result is its coroutine.
        (coroutine,) = finished[1][2]
        assert inspect.iscoroutine(coroutine)

    async def test_a_wrapper_alone_still_sees_the_call(self):
        calls: Calls = []
        async with run_daemon({"wrapper": Wrapper(calls), "handles": Handles()}) as daemon:
            await daemon.send("file.ready")
        assert ("result", "accepted", []) in calls
        assert ("result", "finished", []) in calls


class TestObserverFailures:
    async def test_a_failing_def_or_async_observer_stops_neither_the_others_nor_delivery(self):
        calls: Calls = []
        plugins = {
            "before": _observer(calls, "before", trylast=True),
            "broken": Broken(),
            "after": _observer(calls, "after", tryfirst=True),
            "handles": Handles(),
        }
        with capture_logs() as logs:
            async with run_daemon(plugins) as daemon:
                sent = await daemon.send("file.ready")
        assert [o.status for o in sent.outcomes] == ["ok"]
        # "broken" runs between them in pluggy's order: both others still hear of it.
        assert sorted(calls) == sorted(
            (hook, name) for hook in ("accepted", "finished") for name in ("before", "after")
        )
        failures = [(e["plugin"], e["hook"]) for e in logs if e["event"] == "observer hook failed"]
        assert sorted(failures) == [
            ("broken", "frameiod_delivery_finished"),
            ("broken", "frameiod_event_accepted"),
        ]


class TestBlocked:
    def test_a_blocked_name_is_never_registered(self):
        pm = make_plugin_manager(load_entrypoints=False, blocked=["noisy"])
        assert pm.register(Handles(), name="noisy") is None
        pm.register(Handles(), name="kept")
        host = PluginHost(pm)
        assert host.loaded == ["kept"]
        info = host.add(Handles(), "noisy")
        assert (info.status, info.reason) == ("disabled", "listed in [plugins] disable")
        assert host.loaded == ["kept"]
        assert [h.plugin for h in host.routes().handlers] == ["kept"]


# --- the meta-test: every hookspec is called, with its documented arguments ---------


class Settings(BaseModel):
    channel: str


class AllHooks:
    """Implements every hookspec and records each call with its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))

    async def handle(self, event: WebhookEvent) -> None:
        pass

    async def act(self, event: ActionEvent) -> Message:
        return Message("Done", "it worked")

    @hookimpl
    def frameiod_plugin_config_model(self) -> type[BaseModel]:
        self._record("frameiod_plugin_config_model")
        return Settings

    @hookimpl
    def frameiod_webhook_handlers(self) -> list[WebhookHandler]:
        self._record("frameiod_webhook_handlers")
        return [WebhookHandler(func=self.handle, event_types=("file.ready",))]

    @hookimpl
    def frameiod_action_handlers(self) -> list[ActionHandler]:
        self._record("frameiod_action_handlers")
        return [ActionHandler(func=self.act, action="rec.act")]

    @hookimpl
    async def frameiod_startup(self, context: PluginContext) -> None:
        self._record("frameiod_startup", context=context)

    @hookimpl
    async def frameiod_shutdown(self, context: PluginContext) -> None:
        self._record("frameiod_shutdown", context=context)

    @hookimpl
    async def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> None:
        self._record("frameiod_event_accepted", event=event, source=source)

    @hookimpl
    async def frameiod_delivery_finished(
        self, event: WebhookEvent, handler: WebhookHandler, outcome: Outcome
    ) -> None:
        self._record("frameiod_delivery_finished", event=event, handler=handler, outcome=outcome)

    @hookimpl(wrapper=True)
    def frameiod_call_handler(
        self, event: WebhookEvent, handler: WebhookHandler, attempt: int, trace_context: str | None
    ) -> Generator[None, Any, Any]:
        self._record(
            "frameiod_call_handler",
            event=event,
            handler=handler,
            attempt=attempt,
            trace_context=trace_context,
        )
        return (yield)

    @hookimpl(wrapper=True)
    def frameiod_call_action(
        self, event: ActionEvent, handler: ActionHandler
    ) -> Generator[None, Any, Any]:
        self._record("frameiod_call_action", event=event, handler=handler)
        return (yield)

    @hookimpl(wrapper=True)
    def frameiod_receive(self, reception: Reception) -> Generator[None, Any, Any]:
        self._record("frameiod_receive", reception=reception)
        return (yield)


def _check_arguments(hook: str, kwargs: dict[str, Any], sent_id: str) -> None:
    """Each argument is what the hookspec's docstring says it is."""
    if hook == "frameiod_call_action":
        assert isinstance(kwargs["event"], ActionEvent)
        assert (kwargs["handler"].plugin, kwargs["handler"].action) == ("rec", "rec.act")
        return
    if hook == "frameiod_receive":
        reception = kwargs["reception"]
        assert isinstance(reception, Reception)
        assert (reception.kind, reception.source) in {("webhook", "default"), ("action", "default")}
        assert reception.request.path == f"/{reception.kind}s/default"
        return
    if "attempt" in kwargs:
        assert (kwargs["attempt"], kwargs["trace_context"]) == (1, None)
    if "context" in kwargs:
        context = kwargs["context"]
        assert isinstance(context, PluginContext)
        assert context.name == "rec"
        assert context.plugin_config == Settings(channel="#media")
    if "event" in kwargs:
        assert isinstance(kwargs["event"], WebhookEvent)
        assert kwargs["event"].event_id == sent_id
    if "source" in kwargs:
        assert kwargs["source"] == "default"
    if "handler" in kwargs:
        assert (kwargs["handler"].plugin, kwargs["handler"].name) == ("rec", "handle")
    if "outcome" in kwargs:
        assert isinstance(kwargs["outcome"], Outcome)
        assert kwargs["outcome"].status == "ok"


class TestEveryHook:
    @pytest.mark.parametrize("name", hookspecs.all_hook_names())
    def test_each_hookspec_documents_when_it_is_called(self, name: str):
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Called" in doc, f"{name}'s docstring must say when it is called"

    async def test_the_daemon_calls_every_hookspec_with_its_documented_arguments(self):
        specs = hookspecs.all_hook_names()
        recorder = AllHooks()
        implemented = {name for name in dir(recorder) if name.startswith("frameiod_")}
        assert implemented == set(specs), "the recording plugin must implement every hookspec"
        settings = '[plugins.rec]\nchannel = "#media"\n'
        async with run_daemon({"rec": recorder}, settings=settings) as daemon:
            sent = await daemon.send("file.ready")
            status, answer = await daemon.act("rec.act")
        assert [o.status for o in sent.outcomes] == ["ok"]
        assert (status, answer["title"]) == (200, "Done")
        called = {hook for hook, _ in recorder.calls}
        assert sorted(set(specs) - called) == [], "hookspecs the daemon never called"
        for hook, kwargs in recorder.calls:
            documented = list(inspect.signature(getattr(hookspecs, hook)).parameters)
            assert list(kwargs) == documented, hook
            assert sent.id is not None
            _check_arguments(hook, kwargs, sent.id)
        # The lifecycle in order: offers and config first, then start, events, and stop.
        order = [hook for hook, _ in recorder.calls]
        assert order.index("frameiod_startup") > order.index("frameiod_plugin_config_model")
        assert order[-1] == "frameiod_shutdown"
