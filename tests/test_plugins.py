"""Plugins: discovery through entry points, isolation of failures, routing, lifecycle."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from structlog.testing import capture_logs

from frameiod import (
    ActionHandler,
    App,
    Message,
    PluginContext,
    WebhookEvent,
    WebhookHandler,
    hookimpl,
)
from frameiod.config import ConfigError
from frameiod.plugins.host import ENTRY_POINT_GROUP, PluginHost, make_plugin_manager
from frameiod.testing import TEST_SECRET, run_daemon

# --- plugins defined in the test, registered as objects ------------------------------


class Recorder:
    """A hook-level plugin that records every call it gets, in order."""

    def __init__(self, calls: list[Any], name: str) -> None:
        self.calls = calls
        self.name = name

    @hookimpl
    def frameiod_webhook_handlers(self) -> list[WebhookHandler]:
        return [WebhookHandler(func=self.handle, event_types=("*",), name="handle")]

    async def handle(self, event: WebhookEvent) -> None:
        self.calls.append(("handle", self.name, event.type))

    @hookimpl
    async def frameiod_startup(self, context: PluginContext) -> None:
        self.calls.append(("startup", self.name, context.name))

    @hookimpl
    def frameiod_shutdown(self, context: PluginContext) -> None:
        self.calls.append(("shutdown", self.name))

    @hookimpl
    async def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> None:
        self.calls.append(("accepted", self.name, event.event_id, source))

    @hookimpl
    def frameiod_delivery_finished(
        self, event: WebhookEvent, handler: WebhookHandler, outcome: Any
    ) -> None:
        self.calls.append(("finished", self.name, handler.plugin, handler.name, outcome.status))


def _host() -> PluginHost:
    """A host on a fresh manager without entry points, for plugins added in the test."""
    return PluginHost(make_plugin_manager(load_entrypoints=False))


def _statuses(sent: Any) -> list[str]:
    return sorted(outcome.status for outcome in sent.outcomes)


class TestHooks:
    async def test_lifecycle_order_is_registration_order_then_reverse(self):
        calls: list[Any] = []
        plugins = {"first": Recorder(calls, "first"), "second": Recorder(calls, "second")}
        async with run_daemon(plugins) as daemon:
            sent = await daemon.send("file.ready")
        assert sent.status == 202
        startups = [c for c in calls if c[0] == "startup"]
        assert startups == [("startup", "first", "first"), ("startup", "second", "second")]
        assert [c for c in calls if c[0] == "shutdown"] == [
            ("shutdown", "second"),
            ("shutdown", "first"),
        ]
        # Each observer hears about the event once, and about each handler call once (in
        # pluggy's order, the last registered first: see TestObserverOrder).
        accepted = [c for c in calls if c[0] == "accepted"]
        assert accepted == [("accepted", name, sent.id, "default") for name in ("second", "first")]
        finished = sorted(c for c in calls if c[0] == "finished")
        assert finished == sorted(
            ("finished", observer, plugin, "handle", "ok")
            for observer in ("first", "second")
            for plugin in ("first", "second")
        )

    async def test_observer_that_raises_does_not_stop_handlers_or_other_observers(self):
        calls: list[Any] = []

        class Broken:
            @hookimpl
            def frameiod_event_accepted(self, event: WebhookEvent, source: str) -> None:
                raise RuntimeError("observer bug")

            @hookimpl
            def frameiod_delivery_finished(
                self, event: WebhookEvent, handler: Any, outcome: Any
            ) -> None:
                raise RuntimeError("observer bug")

        with capture_logs() as logs:
            async with run_daemon({"broken": Broken(), "rec": Recorder(calls, "rec")}) as daemon:
                sent = await daemon.send("file.ready")
        assert _statuses(sent) == ["ok"]
        assert ("handle", "rec", "file.ready") in calls
        assert any(c[0] == "accepted" for c in calls)
        failures = [e for e in logs if e["event"] == "observer hook failed"]
        assert {e["hook"] for e in failures} == {
            "frameiod_event_accepted",
            "frameiod_delivery_finished",
        }


class TestApp:
    async def test_several_handlers_for_one_type_all_run(self):
        app = App()
        ran: list[str] = []

        @app.on_webhook("file.ready")
        async def one(event: WebhookEvent) -> None:
            ran.append("one")

        @app.on_webhook("file.ready")
        async def two(event: WebhookEvent) -> None:
            ran.append("two")

        async with run_daemon({"app": app}) as daemon:
            sent = await daemon.send("file.ready")
        assert sorted(ran) == ["one", "two"]
        assert _statuses(sent) == ["ok", "ok"]

    @pytest.mark.parametrize(
        ("pattern", "wanted", "unwanted"),
        [
            ("file.*", ["file.ready", "file.upload.completed"], ["folder.created", "filex.ready"]),
            ("*", ["file.ready", "share.viewed", "anything.new"], []),
            (["comment.created", "comment.updated"], ["comment.updated"], ["comment.deleted"]),
        ],
    )
    async def test_patterns(self, pattern: Any, wanted: list[str], unwanted: list[str]):
        app = App()
        seen: list[str] = []

        @app.on_webhook(event_type=pattern)
        async def handler(event: WebhookEvent) -> None:
            seen.append(event.type)

        async with run_daemon({"app": app}) as daemon:
            for event_type in wanted + unwanted:
                await daemon.send(event_type)
        assert seen == wanted

    async def test_handler_that_raises_is_isolated_from_its_siblings(self):
        app = App()
        ran: list[str] = []

        @app.on_webhook("comment.created")
        async def broken(event: WebhookEvent) -> None:
            raise ValueError("bad data")

        @app.on_webhook("comment.created")
        async def fine(event: WebhookEvent) -> None:
            ran.append(event.resource_id)

        with capture_logs() as logs:
            async with run_daemon({"app": app}) as daemon:
                sent = await daemon.send("comment.created", resource={"id": "c1"})
        assert ran == ["c1"]
        outcomes = {o.status: o for o in sent.outcomes}
        assert outcomes["error"].error == "ValueError: bad data"
        failed = [e for e in logs if e["event"] == "handler failed"]
        assert failed[0]["handler"] == "broken"
        assert failed[0]["exc_info"].args == ("bad data",)

    async def test_hanging_handler_times_out_and_the_others_still_run(self):
        app = App()
        ran: list[str] = []
        release = asyncio.Event()

        @app.on_webhook("file.ready", timeout=0.2)
        async def hangs(event: WebhookEvent) -> None:
            await release.wait()

        @app.on_webhook("file.ready")
        async def quick(event: WebhookEvent) -> None:
            ran.append("quick")

        async with run_daemon({"app": app}) as daemon:
            sent = await daemon.send("file.ready")
        assert ran == ["quick"]
        timeout = next(o for o in sent.outcomes if o.status == "timeout")
        assert timeout.error == "no answer within 0.2s"
        assert 0.2 <= timeout.seconds < 5

    async def test_plain_functions_run_off_the_event_loop(self):
        app = App()
        threads: list[str] = []

        @app.on_webhook("file.ready")
        def blocking(event: WebhookEvent) -> None:
            time.sleep(0.05)  # a blocking call, as a sync SDK would make
            threads.append(threading.current_thread().name)

        async with run_daemon({"app": app}) as daemon:
            sent = await daemon.send("file.ready")
        assert _statuses(sent) == ["ok"]
        assert threads == ["frameiod-handler-file.ready"]

    async def test_a_hung_plain_function_cannot_keep_the_daemon_from_stopping(self):
        app = App()
        never = threading.Event()

        @app.on_webhook("file.ready", timeout=0.1)
        def stuck(event: WebhookEvent) -> None:
            never.wait()

        async with run_daemon({"app": app}) as daemon:
            sent = await daemon.send("file.ready")
        assert _statuses(sent) == ["timeout"]
        stuck_threads = [t for t in threading.enumerate() if t.name.startswith("frameiod-handler")]
        assert stuck_threads
        assert all(t.daemon for t in stuck_threads)
        never.set()

    async def test_secret_routes_deliveries_to_the_handler_that_declared_it(self):
        app = App()
        got: list[tuple[str, str]] = []

        @app.on_webhook("file.ready", secret="webhook-a-secret")
        async def only_a(event: WebhookEvent) -> None:
            got.append(("only_a", event.resource_id))

        @app.on_webhook("file.ready", secret=["webhook-b-secret", "webhook-b-rotated"])
        async def only_b(event: WebhookEvent) -> None:
            got.append(("only_b", event.resource_id))

        @app.on_webhook("file.ready")
        async def everything(event: WebhookEvent) -> None:
            got.append(("everything", event.resource_id))

        async with run_daemon({"app": app}) as daemon:
            a = await daemon.send("file.ready", secret="webhook-a-secret", resource={"id": "A"})
            b = await daemon.send("file.ready", secret="webhook-b-rotated", resource={"id": "B"})
            c = await daemon.send("file.ready", secret=TEST_SECRET, resource={"id": "C"})
            forged = await daemon.send("file.ready", secret="nobody's", resource={"id": "X"})
        assert (a.status, b.status, c.status, forged.status) == (202, 202, 202, 401)
        assert sorted(got) == [
            ("everything", "A"),
            ("everything", "B"),
            ("everything", "C"),
            ("only_a", "A"),
            ("only_b", "B"),
        ]

    async def test_handler_secret_on_an_unconfigured_source_creates_that_source(self):
        app = App()
        got: list[str] = []

        @app.on_webhook("file.ready", source="studio", secret="studio-secret")
        async def studio(event: WebhookEvent) -> None:
            got.append(event.resource_id)

        async with run_daemon({"app": app}) as daemon:
            ok = await daemon.send(
                "file.ready", source="studio", secret="studio-secret", resource={"id": "s1"}
            )
            status, _ = await daemon.post(b"{}", source="studio", secret="wrong")
        assert ok.status == 202
        assert got == ["s1"]
        assert status == 401

    async def test_client_without_a_token_says_how_to_configure_one(self):
        app = App()
        async with run_daemon({"app": app}):
            with pytest.raises(RuntimeError, match=r"set \[frameio\] token"):
                _ = app.client

    def test_on_webhook_needs_an_event_type(self):
        with pytest.raises(TypeError, match="needs an event type"):
            App().on_webhook()

    async def test_unknown_event_type_is_a_warning_naming_the_handler_and_the_fix(self):
        app = App()

        @app.on_webhook("file.redy")
        async def typo(event: WebhookEvent) -> None: ...

        @app.on_webhook("fiel.*")
        async def group_typo(event: WebhookEvent) -> None: ...

        with capture_logs() as logs:
            _host().add(app, "typos")
        warnings = {
            e["handler"]: e["problem"]
            for e in logs
            if e["event"] == "handler subscribes to an unknown event type"
        }
        assert warnings["typo"] == (
            "'file.redy' is not a Frame.io event type (did you mean 'file.ready'?)"
        )
        assert "no Frame.io event type starts with 'fiel.'" in warnings.values()


class Settings(BaseModel):
    model_config = {"extra": "forbid"}
    channel: str
    retries: int = Field(default=3, ge=0)


class TestPluginConfig:
    async def test_plugin_gets_its_validated_table(self):
        app = App(config_model=Settings)
        async with run_daemon({"cfg": app}, settings='[plugins.cfg]\nchannel = "#media"\n'):
            assert app.config == Settings(channel="#media", retries=3)

    async def test_hook_plugins_declare_it_with_frameiod_plugin_config_model(self):
        seen: list[Any] = []

        class Plugin:
            @hookimpl
            def frameiod_plugin_config_model(self) -> type[BaseModel]:
                return Settings

            @hookimpl
            def frameiod_startup(self, context: PluginContext) -> None:
                seen.append((context.plugin_config, context.log))

        async with run_daemon({"p": Plugin()}, settings='[plugins.p]\nchannel = "#x"\n'):
            pass
        assert seen[0][0] == Settings(channel="#x")
        with capture_logs() as logs:
            seen[0][1].info("hello")
        assert logs == [{"plugin": "p", "event": "hello", "log_level": "info"}]

    @pytest.mark.parametrize(
        ("table", "problem"),
        [
            (
                'retries = -1\nchannel = "x"',
                "plugins.cfg.retries: input should be greater than or equal to 0, got -1",
            ),
            ("", "plugins.cfg.channel: required key is missing"),
            (
                'channel = "x"\nchanel = "y"',
                'plugins.cfg.chanel: unknown key (did you mean "channel"?)',
            ),
        ],
    )
    async def test_errors_name_the_key_path(self, table: str, problem: str):
        with pytest.raises(ConfigError) as error:
            async with run_daemon(
                {"cfg": App(config_model=Settings)}, settings=f"[plugins.cfg]\n{table}\n"
            ):
                pass
        assert len(error.value.problems) == 1
        assert error.value.problems[0].endswith(f"config.toml: {problem}")

    async def test_a_table_for_a_plugin_without_a_model_is_an_error(self):
        with pytest.raises(ConfigError) as error:
            async with run_daemon({"plain": App()}, settings="[plugins.plain]\nx = 1\n"):
                pass
        assert error.value.problems[0].endswith(
            "config.toml: plugins.plain: the plain plugin takes no settings"
        )

    def test_a_table_for_a_plugin_that_is_not_installed_is_a_warning(self, tmp_path: Path):
        from support import make_config

        config = make_config(
            tmp_path, '[sources.default]\nsecrets = ["s"]\n[plugins.gone]\nx = 1\n'
        )
        assert _host().configure(config) == [
            f"{config.path}: plugins.gone: no plugin named 'gone' is installed"
        ]


class TestStartupFailures:
    async def test_a_plugin_whose_startup_raises_is_failed_and_the_rest_run(self):
        calls: list[Any] = []
        bad = App()

        @bad.on_startup
        def explode(context: PluginContext) -> None:
            raise ConnectionError("database unreachable")

        @bad.on_webhook("*")
        async def never(event: WebhookEvent) -> None:
            calls.append("bad handler ran")

        with capture_logs() as logs:
            async with run_daemon({"bad": bad, "good": Recorder(calls, "good")}) as daemon:
                sent = await daemon.send("file.ready")
                host = daemon.daemon.plugins
                metrics = await daemon.metrics()
        assert host.plugins["bad"].status == "failed"
        assert host.plugins["bad"].reason == (
            "frameiod_startup raised ConnectionError: database unreachable"
        )
        assert host.plugins["good"].status == "loaded"
        assert _statuses(sent) == ["ok"]
        assert "bad handler ran" not in calls
        failure = next(e for e in logs if e["event"] == "plugin failed")
        assert "ConnectionError: database unreachable" in failure["traceback"]
        assert (
            metrics[
                ("frameiod_plugins", (("plugin", "bad"), ("status", "failed"), ("version", "")))
            ]
            == 1
        )

    def test_a_plugin_offering_something_that_is_not_a_handler_fails_to_load(self):
        class Wrong:
            @hookimpl
            def frameiod_webhook_handlers(self) -> list[Any]:
                return [lambda event: None]

        info = _host().add(Wrong(), "wrong")
        assert info.status == "failed"
        assert "not a WebhookHandler" in str(info.reason)

    async def test_two_plugins_answering_one_custom_action_stop_start_up(self):
        class Rival:
            def __init__(self, reply: str) -> None:
                self.reply = reply

            @hookimpl
            def frameiod_action_handlers(self) -> list[ActionHandler]:
                async def answer(event: Any) -> Message:
                    return Message(self.reply)

                return [ActionHandler(func=answer, action="acme.render")]

        with pytest.raises(ConfigError) as error:
            async with run_daemon({"first": Rival("a"), "second": Rival("b")}):
                pass
        assert error.value.problems == [
            "custom action 'acme.render' (source 'default') is handled by both plugin "
            "'first' and plugin 'second'; disable one of them in [plugins] disable"
        ]

    def test_a_plugin_implementing_an_unknown_hook_fails_to_load(self):
        class Typo:
            @hookimpl
            def frameiod_startpu(self) -> None: ...

        info = _host().add(Typo(), "typo")
        assert info.status == "failed"
        assert info.reason == (
            "PluginValidationError: implements unknown hook(s): frameiod_startpu"
        )


class TestHandlerMetrics:
    async def test_outcomes_are_counted_per_plugin_and_handler(self):
        app = App()

        @app.on_webhook("file.ready", name="copy")
        async def copy(event: WebhookEvent) -> None:
            if event.resource_id == "bad":
                raise RuntimeError("nope")

        async with run_daemon({"storage": app}) as daemon:
            before = await daemon.metrics()
            await daemon.send("file.ready")
            await daemon.send("file.ready")
            await daemon.send("file.ready", resource={"id": "bad"})
            after = await daemon.metrics()

        def runs(samples: dict, outcome: str) -> float:
            key = (("handler", "copy"), ("outcome", outcome), ("plugin", "storage"))
            return samples[("frameiod_handler_runs_total", key)]

        assert [runs(before, o) for o in ("ok", "error", "timeout")] == [0, 0, 0]
        assert [runs(after, o) for o in ("ok", "error", "timeout")] == [2, 1, 0]
        key = (("handler", "copy"), ("plugin", "storage"))
        assert after[("frameiod_handler_seconds_count", key)] == 3


# --- discovery through real entry points, of modules written to disk -----------------


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "site"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m.startswith("fdtest_")]:
        del sys.modules[name]


def _entry_points(folder: Path, modules: dict[str, str]) -> list[importlib.metadata.EntryPoint]:
    points = []
    for name, code in modules.items():
        module = f"fdtest_{name}_{abs(hash(folder)) % 10**8}"
        (folder / f"{module}.py").write_text(code)
        points.append(importlib.metadata.EntryPoint(name, module, ENTRY_POINT_GROUP))
    return points


GOOD = """
from frameiod import App
app = App()
@app.on_webhook("file.ready")
async def handle(event): pass
"""
HOOK_MODULE = """
from frameiod import hookimpl, WebhookHandler
async def handle(event): pass
@hookimpl
def frameiod_webhook_handlers():
    return [WebhookHandler(func=handle, event_types=("comment.*",), name="handle")]
"""


class TestDiscovery:
    def test_app_instances_and_hook_modules_are_both_plugins(self, plugin_dir: Path):
        points = _entry_points(plugin_dir, {"a": "", "b": HOOK_MODULE})
        (plugin_dir / f"{points[0].value}.py").write_text(GOOD)
        points[0] = importlib.metadata.EntryPoint("a", f"{points[0].value}:app", ENTRY_POINT_GROUP)
        host = PluginHost(make_plugin_manager(entry_points=points, environ={}))
        assert host.loaded == ["a", "b"]
        handlers = {h.plugin: h.event_types for h in host.routes().handlers}
        assert handlers == {"a": ("file.ready",), "b": ("comment.*",)}

    def test_a_plugin_that_fails_to_import_is_reported_and_skipped(self, plugin_dir: Path):
        points = _entry_points(
            plugin_dir,
            {
                "broken": "import frameiod_no_such_dependency\n",
                "good": HOOK_MODULE,
            },
        )
        with capture_logs() as logs:
            host = PluginHost(make_plugin_manager(entry_points=points, environ={}))
        assert host.loaded == ["good"]
        broken = host.plugins["broken"]
        assert broken.status == "failed"
        assert "ModuleNotFoundError: No module named 'frameiod_no_such_dependency'" in str(
            broken.reason
        )
        logged = next(e for e in logs if e["event"] == "plugin failed")
        assert logged["plugin"] == "broken"
        assert "Traceback" in logged["traceback"]

    def test_a_plugin_that_exits_at_import_does_not_take_the_daemon_down(self, plugin_dir: Path):
        points = _entry_points(plugin_dir, {"exits": "raise SystemExit(3)\n", "good": HOOK_MODULE})
        host = PluginHost(make_plugin_manager(entry_points=points, environ={}))
        assert host.plugins["exits"].status == "failed"
        assert host.loaded == ["good"]

    def test_disable_skips_a_plugin_without_importing_it(self, plugin_dir: Path):
        points = _entry_points(
            plugin_dir, {"noisy": "raise RuntimeError('imported!')\n", "good": HOOK_MODULE}
        )
        pm = make_plugin_manager(blocked=["noisy"], entry_points=points, environ={})
        host = PluginHost(pm)
        assert host.plugins["noisy"].status == "disabled"
        assert host.plugins["noisy"].reason == "listed in [plugins] disable"
        assert host.loaded == ["good"]

    @pytest.mark.parametrize(
        ("allow", "loaded"), [("good", ["good"]), ("", []), (" other , good ", ["good", "other"])]
    )
    def test_frameiod_plugins_env_is_an_allow_list(
        self, plugin_dir: Path, allow: str, loaded: list[str]
    ):
        points = _entry_points(
            plugin_dir, {"good": HOOK_MODULE, "other": HOOK_MODULE, "third": HOOK_MODULE}
        )
        pm = make_plugin_manager(entry_points=points, environ={"FRAMEIOD_PLUGINS": allow})
        host = PluginHost(pm)
        assert host.loaded == loaded
        assert host.plugins["third"].reason == "not in $FRAMEIOD_PLUGINS"

    def test_two_plugins_with_one_name_are_both_listed(self, plugin_dir: Path):
        points = _entry_points(plugin_dir, {"same": HOOK_MODULE})
        points.append(importlib.metadata.EntryPoint("same", points[0].value, ENTRY_POINT_GROUP))
        host = PluginHost(make_plugin_manager(entry_points=points, environ={}))
        assert host.loaded == ["same"]
        duplicate = host.plugins["same (None)"]
        assert duplicate.status == "failed"
        assert "another plugin is already named 'same'" in str(duplicate.reason)
