"""sd_notify over a real datagram socket, and the shipped unit checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameiod import systemd
from frameiod.config import DispatchConfig, parse_duration
from frameiod.http.server import SHUTDOWN_TIMEOUT

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "frameiod.service"


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)  # a missing datagram fails the test instead of hanging it
    return sock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound notify socket in tmp_path, and an environment that points at it."""
    path = tmp_path / "notify"
    with _listen(str(path)) as sock:
        yield sock, {"NOTIFY_SOCKET": str(path)}


class TestNotify:
    def test_ready_sends_ready(self, listener):
        sock, env = listener
        assert systemd.ready(environ=env) is True
        assert sock.recv(4096) == b"READY=1"

    def test_ready_with_a_status_sends_both_fields_in_one_datagram(self, listener):
        sock, env = listener
        assert systemd.ready("listening on 127.0.0.1:8080", environ=env)
        assert sock.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:8080"

    def test_stopping(self, listener):
        sock, env = listener
        assert systemd.stopping(environ=env)
        assert sock.recv(4096) == b"STOPPING=1"

    def test_status_is_utf8(self, listener):
        sock, env = listener
        assert systemd.status("draining: 3 handler calls … left", environ=env)
        assert sock.recv(4096) == "STATUS=draining: 3 handler calls … left".encode()

    def test_status_cannot_smuggle_another_field_in(self, listener):
        sock, env = listener
        assert systemd.status("bad\nREADY=1", environ=env)
        assert sock.recv(4096) == b"STATUS=bad READY=1"

    def test_watchdog_ping(self, listener):
        sock, env = listener
        assert systemd.watchdog_ping(environ=env)
        assert sock.recv(4096) == b"WATCHDOG=1"

    def test_reloading_carries_the_monotonic_clock_in_microseconds(self, listener):
        sock, env = listener
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert systemd.reloading(environ=env)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=([0-9]+)", sock.recv(4096))
        assert match is not None
        assert before <= int(match[1]) <= after

    def test_notify_joins_fields_with_newlines(self, listener):
        sock, env = listener
        assert systemd.notify("STATUS=x", "EXTEND_TIMEOUT_USEC=5000000", environ=env)
        assert sock.recv(4096) == b"STATUS=x\nEXTEND_TIMEOUT_USEC=5000000"

    def test_abstract_socket(self):
        name = f"frameiod-test-{secrets.token_hex(8)}"
        with _listen("\0" + name) as sock:
            assert systemd.ready(environ={"NOTIFY_SOCKET": "@" + name})
            assert sock.recv(4096) == b"READY=1"

    def test_reads_the_process_environment_by_default(self, listener, monkeypatch):
        sock, env = listener
        monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
        assert systemd.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


class TestNotifyOutsideSystemd:
    def test_without_notify_socket_nothing_is_sent(self, monkeypatch):
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert systemd.ready() is False
        assert systemd.notify("READY=1", environ={}) is False

    @pytest.mark.parametrize("address", ["", "@", "relative/notify"])
    def test_an_unusable_address_is_ignored(self, address):
        assert systemd.ready(environ={"NOTIFY_SOCKET": address}) is False

    def test_a_missing_socket_returns_false(self, tmp_path):
        env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-here")}
        assert systemd.ready(environ=env) is False
        assert systemd.watchdog_ping(environ=env) is False

    def test_a_socket_nobody_listens_on_returns_false(self, tmp_path):
        path = tmp_path / "closed"
        _listen(str(path)).close()  # the file stays; sending to it is refused
        assert path.exists()
        assert systemd.stopping(environ={"NOTIFY_SOCKET": str(path)}) is False

    def test_an_unbound_abstract_socket_returns_false(self):
        env = {"NOTIFY_SOCKET": f"@frameiod-test-{secrets.token_hex(8)}"}
        assert systemd.reloading(environ=env) is False


class TestWatchdogPeriod:
    def test_half_of_watchdog_usec_in_seconds(self):
        assert systemd.watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0

    def test_watchdog_pid_of_this_process(self):
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert systemd.watchdog_period(env) == 15.0

    def test_watchdog_meant_for_another_process(self):
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert systemd.watchdog_period(env) is None

    @pytest.mark.parametrize(
        "env",
        [
            {},
            {"WATCHDOG_USEC": ""},
            {"WATCHDOG_USEC": "30s"},
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "-5"},
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"},
        ],
    )
    def test_no_usable_watchdog(self, env):
        assert systemd.watchdog_period(env) is None

    def test_reads_the_process_environment_by_default(self, monkeypatch):
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        assert systemd.watchdog_period() == 2.0


# --- the unit file -----------------------------------------------------------------------


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: install the Debian `systemd` package "
            "(apt-get install -y systemd) to check systemd/frameiod.service"
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "--no-pager", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key] = value
    return settings


def _verify_problems(unit_text: str, tmp_path: Path) -> list[str]:
    """What `systemd-analyze verify` says about this unit. The executable is swapped for one
    that exists here (verify refuses a missing ExecStart); nothing else is changed."""
    text, count = re.subn(
        r"^ExecStart=/opt/frameiod/\.venv/bin/frameiod ",
        f"ExecStart={sys.executable} ",
        unit_text,
        flags=re.MULTILINE,
    )
    assert count == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    result = _run("verify", str(copy))
    # verify exits 0 even for unknown keys or unparsable values, only printing a warning
    # that names the file: every line naming our unit is a problem.
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if UNIT.name in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return problems


class TestUnit:
    def test_verify_finds_no_problem(self, tmp_path):
        assert _verify_problems(UNIT.read_text(), tmp_path) == []

    def test_verify_would_catch_a_mistake(self, tmp_path):
        broken = UNIT.read_text().replace("Type=notify\n", "Type=notifyy\nProtectSytem=strict\n")
        problems = _verify_problems(broken, tmp_path)
        assert any("notifyy" in line for line in problems), problems
        assert any("ProtectSytem" in line for line in problems), problems

    def test_exposure_is_at_most_2_0(self):
        result = _run("security", "--offline=yes", "--threshold=20", str(UNIT))
        # The threshold is in tenths: exit status 0 means an exposure of 2.0 or less.
        assert result.returncode == 0, result.stdout + result.stderr
        match = re.search(r"Overall exposure level for \S+: ([0-9]+\.[0-9]+)", result.stdout)
        assert match is not None, result.stdout
        assert float(match[1]) <= 2.0

    def test_stop_timeout_outlasts_a_graceful_stop(self):
        # Daemon.stop: requests in flight, aiohttp's own cleanup, then handler calls and
        # late custom actions each get drain_timeout.
        graceful = 2 * SHUTDOWN_TIMEOUT + 2 * DispatchConfig().drain_timeout
        assert parse_duration(_unit_settings()["TimeoutStopSec"]) > graceful

    def test_runs_the_daemon_with_the_system_config(self):
        settings = _unit_settings()
        assert settings["ExecStart"] == (
            "/opt/frameiod/.venv/bin/frameiod run --config /etc/frameiod/config.toml"
        )
        assert settings["Type"] == "notify"
        assert settings["StateDirectory"] == "frameiod"
        assert settings["WatchdogSec"] == "30s"
