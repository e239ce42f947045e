"""Live reload on SIGHUP: new settings apply at once, a broken file changes nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import DaemonProcess, signed_headers

from frameiod.events import example_payload


def _config(secret: str, extra: str = "", port: int = 0) -> str:
    return f"""
[server]
port = {port}
[log]
format = "json"
[sources.default]
secrets = ["{secret}"]
{extra}
"""


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
    path.write_text(_config("old-secret"))
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
        config.write_text(_config("new-secret", extra='tolerance = "1m"\nrate = 5.0'))
        reloaded = _reload(daemon, 1, "config reloaded")
        assert reloaded["sources"] == ["default"]
        assert _send(daemon, "old-secret") == 401
        assert _send(daemon, "new-secret") == 202
        assert _reloads(daemon) == {"ok": 1, "error": 0}

    def test_a_new_source_is_served_after_reload(self, daemon: DaemonProcess, config: Path):
        assert _send(daemon, "studio-secret", source="studio") == 404
        config.write_text(_config("old-secret") + '[sources.studio]\nsecrets = ["studio-secret"]\n')
        _reload(daemon, 1, "config reloaded")
        assert _send(daemon, "studio-secret", source="studio") == 202

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("[server\n", "not valid TOML"),
            (
                _config("new-secret", extra="tolerence = '1m'"),
                'sources.default.tolerence: unknown key (did you mean "tolerance"?)',
            ),
            (
                _config("env:FRAMEIOD_RELOAD_TEST_UNSET"),
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
        config.write_text(_config("old-secret", port=1) + '[spool]\nsynchronous = "NORMAL"\n')
        warning = _reload(daemon, 1, "these settings take effect only after a restart")
        assert warning["keys"] == ["server.port", "spool"]
        assert _send(daemon, "old-secret") == 202  # still on the old port

    def test_the_log_level_changes_on_reload(self, daemon: DaemonProcess, config: Path):
        config.write_text(
            _config("old-secret", extra="").replace(
                'format = "json"', 'format = "json"\nlevel = "warning"'
            )
        )
        _reload(daemon, 1, "config reloaded")
        before = len(daemon.lines)
        assert _send(daemon, "old-secret") == 202
        assert _send(daemon, "forged") == 401
        daemon.wait_for_log(lambda line: line.get("event") == "webhook rejected")
        assert "webhook accepted" not in [line["event"] for line in daemon.lines[before:]]


class TestSecretFilesOnReload:
    def test_a_named_pipe_secret_is_refused_and_the_daemon_keeps_answering(
        self, daemon: DaemonProcess, config: Path, tmp_path: Path
    ):
        """A reload reads secrets off the event loop and never waits on a named pipe: the
        refusal names the key, and /healthz answers all the while."""
        fifo = tmp_path / "webhook.secret"
        os.mkfifo(fifo)
        config.write_text(_config(f"file:{fifo}"))
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
