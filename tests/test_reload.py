"""Live reload on SIGHUP: new settings apply at once, a broken file changes nothing."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import JSON_LOG, DaemonProcess, config_toml, on_the_daemons_loop, signed_headers

from frameiod.config import DEV_SECRET, ConfigError, load_config
from frameiod.daemon import Daemon
from frameiod.events import example_payload

# Every daemon here logs JSON lines; each test chooses the secret of source "default".
_config = functools.partial(config_toml, log=JSON_LOG)


def _send(daemon: DaemonProcess, secret: str, source: str = "default") -> int:
    body = json.dumps(example_payload("file.ready")).encode()
    response = httpx.post(
        daemon.url(f"/webhooks/{source}"),
        content=body,
        headers=signed_headers(body, secret),
        timeout=5,
    )
    return response.status_code


def _reloads(daemon: DaemonProcess) -> dict[str, float]:
    text = httpx.get(daemon.url("/metrics"), timeout=5).text
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "frameiod_config_reloads_total"
    }


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(_config(secret="old-secret"))
    return path


@pytest.fixture
def daemon(config: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(config)
    process.port  # noqa: B018 - wait until it listens
    yield process
    process.kill()


def _reload(daemon: DaemonProcess, count: int, event: str) -> dict[str, object]:
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log(
        lambda line: len([e for e in daemon.lines if e.get("event") == event]) >= count
    )
    return daemon.logs(event)[count - 1]


class TestReload:
    def test_a_secret_is_rotated_by_reload(self, daemon: DaemonProcess, config: Path):
        assert _send(daemon, "old-secret") == 202
        config.write_text(_config(secret="new-secret", source='tolerance = "1m"\nrate = 5.0'))
        reloaded = _reload(daemon, 1, "config reloaded")
        assert reloaded["sources"] == ["default"]
        assert _send(daemon, "old-secret") == 401
        assert _send(daemon, "new-secret") == 202
        assert _reloads(daemon) == {"ok": 1, "error": 0}

    def test_a_new_source_is_served_after_reload(self, daemon: DaemonProcess, config: Path):
        assert _send(daemon, "studio-secret", source="studio") == 404
        config.write_text(
            _config(secret="old-secret", extra='[sources.studio]\nsecrets = ["studio-secret"]')
        )
        _reload(daemon, 1, "config reloaded")
        assert _send(daemon, "studio-secret", source="studio") == 202

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("[server\n", "not valid TOML"),
            (
                _config(secret="new-secret", source="tolerence = '1m'"),
                'sources.default.tolerence: unknown key (did you mean "tolerance"?)',
            ),
            (
                _config(secret="env:FRAMEIOD_RELOAD_TEST_UNSET"),
                "environment variable FRAMEIOD_RELOAD_TEST_UNSET is not set",
            ),
        ],
    )
    def test_a_broken_config_leaves_the_old_one_fully_in_force(
        self, daemon: DaemonProcess, config: Path, text: str, problem: str
    ):
        config.write_text(text)
        refused = _reload(daemon, 1, "config reload refused; the old config stays in force")
        assert problem in str(refused["problem"])
        assert _send(daemon, "old-secret") == 202
        assert _send(daemon, "new-secret") == 401
        assert _reloads(daemon) == {"ok": 0, "error": 1}
        assert daemon.process.poll() is None

    def test_settings_that_need_a_restart_are_named(self, daemon: DaemonProcess, config: Path):
        config.write_text(_config(secret="old-secret", port=1, spool='synchronous = "NORMAL"'))
        warning = _reload(daemon, 1, "these settings take effect only after a restart")
        assert warning["keys"] == ["server.port", "spool"]
        assert _send(daemon, "old-secret") == 202  # still on the old port

    def test_a_reload_refills_no_limit_of_a_source_or_an_address(
        self, daemon: DaemonProcess, config: Path
    ):
        """A reload (a certificate renewed, a log level changed) must not unblock a flood."""
        limited = _config(
            secret="old-secret",
            server="unauthenticated_failures = 2",
            source="rate = 0.001\nburst = 2",
        )
        config.write_text(limited)
        _reload(daemon, 1, "config reloaded")
        assert [_send(daemon, "old-secret") for _ in range(3)] == [202, 202, 429]
        config.write_text(limited + "# reloaded again\n")
        _reload(daemon, 2, "config reloaded")
        assert _send(daemon, "old-secret") == 429  # the source's burst is still spent

        assert [_send(daemon, "wrong-secret") for _ in range(3)] == [401, 401, 429]
        config.write_text(limited + "# and again\n")
        _reload(daemon, 3, "config reloaded")
        assert _send(daemon, "wrong-secret") == 429  # the address is still blocked

    def test_the_log_level_changes_on_reload(self, daemon: DaemonProcess, config: Path):
        config.write_text(_config(secret="old-secret", log='format = "json"\nlevel = "warning"'))
        _reload(daemon, 1, "config reloaded")
        before = len(daemon.lines)
        assert _send(daemon, "old-secret") == 202
        assert _send(daemon, "forged") == 401
        daemon.wait_for_log(lambda line: line.get("event") == "webhook rejected")
        assert "webhook accepted" not in [line["event"] for line in daemon.lines[before:]]


class TestDevelopmentSecret:
    """The shipped development secret is judged by the addresses the daemon listens on,
    which a reload cannot change."""

    def test_a_reload_to_loopback_with_the_dev_secret_is_refused_on_a_public_bind(
        self, tmp_path: Path
    ):
        config = tmp_path / "config.toml"
        config.write_text(_config(secret="old-secret", host="0.0.0.0"))
        daemon = DaemonProcess(config)
        try:
            assert daemon.wait_for("listening")["host"] == "0.0.0.0"
            # host changes only at restart: the socket stays on every interface.
            config.write_text(_config(secret=DEV_SECRET, host="127.0.0.1"))
            refused = _reload(daemon, 1, "config reload refused; the old config stays in force")
            assert refused["problem"] == (
                f"{config}: sources.default.secrets: the development secret from the shipped "
                'config.toml is refused while the daemon listens on "0.0.0.0", not a loopback '
                "address (a new server.host takes effect only after a restart); "
                "set the secret Frame.io gave you for this webhook"
            )
            assert _send(daemon, "old-secret") == 202
            assert _send(daemon, DEV_SECRET) == 401
            assert _reloads(daemon) == {"ok": 0, "error": 1}
            assert not daemon.logs("config reloaded")
        finally:
            daemon.kill()

    def test_the_dev_secret_is_still_accepted_by_reload_on_a_loopback_bind(
        self, daemon: DaemonProcess, config: Path
    ):
        config.write_text(_config(secret=DEV_SECRET))
        _reload(daemon, 1, "config reloaded")
        assert _send(daemon, DEV_SECRET) == 202
        assert _send(daemon, "old-secret") == 401

    def test_start_refuses_the_dev_secret_once_bound_beyond_loopback(self, tmp_path: Path):
        """`Daemon.start` checks the config against the sockets it bound, so a config that
        reaches it without load_config's check is refused all the same."""
        config = tmp_path / "config.toml"
        config.write_text(_config(secret=DEV_SECRET))
        loaded = load_config(config)
        public = loaded.model_copy(
            update={"server": loaded.server.model_copy(update={"host": "0.0.0.0"})}
        )
        daemon = Daemon(public)

        with pytest.raises(ConfigError) as error:
            on_the_daemons_loop(daemon.start)
        (problem,) = error.value.problems
        assert (
            "the development secret from the shipped config.toml is refused while "
            'server.host ("0.0.0.0")' in problem
        )


class TestSecretFilesOnReload:
    def test_a_named_pipe_secret_is_refused_and_the_daemon_keeps_answering(
        self, daemon: DaemonProcess, config: Path, tmp_path: Path
    ):
        """A reload reads secrets off the event loop and never waits on a named pipe: the
        refusal names the key, and /healthz answers all the while."""
        fifo = tmp_path / "webhook.secret"
        os.mkfifo(fifo)
        config.write_text(_config(secret=f"file:{fifo}"))
        daemon.process.send_signal(signal.SIGHUP)
        started = time.monotonic()
        assert httpx.get(daemon.url("/healthz"), timeout=1.0).status_code == 200
        assert time.monotonic() - started < 1.0
        refused = daemon.wait_for("config reload refused; the old config stays in force")
        assert refused["problem"] == (
            f'{config}: sources.default.secrets[0]: cannot read "file:{fifo}" ({fifo}): '
            "it is a named pipe, not a regular file"
        )
        assert _send(daemon, "old-secret") == 202
        assert _reloads(daemon) == {"ok": 0, "error": 1}
