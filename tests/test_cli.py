"""``frameiod`` as a user runs it: real subprocesses, real sockets, real signals."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from support import (
    FRAMEIOD,
    SECRET,
    DaemonProcess,
    event_body,
    run_cli,
    signed_headers,
    wait_until,
    write_config,
)

from frameiod import __version__

REPO = Path(__file__).resolve().parents[1]
ACCEPTED = re.compile(r"^202 \{\"status\": \"accepted\", \"id\": \"([0-9a-f-]{36})\"\}$")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(write_config(tmp_path))
    yield process
    process.kill()


def _server_has_read_everything(server_port: int, client_port: int) -> bool:
    """True once the daemon's end of this connection has no unread bytes (Linux /proc)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if (
            int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
        ):
            return int(queues.split(":")[1], 16) == 0
    return False


def _spooled(daemon: DaemonProcess, event_id: str) -> dict[str, object]:
    """The event as the daemon committed it to its SQLite spool (read with sqlite3)."""
    with closing(sqlite3.connect(daemon.config_path.parent / "frameiod.db")) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
    assert row is not None, f"{event_id} is not in the spool"
    return dict(row)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: this connection was waiting in the backlog of a listener that just closed.
        return True
    return False


class TestVersion:
    def test_console_script_prints_the_version(self):
        result = run_cli("--version")
        assert (result.returncode, result.stdout.strip()) == (0, f"frameiod {__version__}")

    def test_python_dash_m_works_too(self):
        result = subprocess.run(
            [sys.executable, "-m", "frameiod", "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (result.returncode, result.stdout.strip()) == (0, f"frameiod {__version__}")


class TestClosedOutput:
    def test_a_reader_that_went_away_gets_no_traceback(self):
        """``frameiod plugins --json | head -c 0``: the pipe is closed before the command
        writes (it is still starting Python), so its output meets a closed pipe."""
        process = subprocess.Popen(
            [*FRAMEIOD, "plugins", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FRAMEIOD_PLUGINS": ""},
        )
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        errors = process.stderr.read()
        assert process.wait(timeout=30) == 1
        assert errors == ""


class TestCheck:
    def test_shipped_config_is_valid(self):
        result = run_cli("check", "--config", str(REPO / "config.toml"))
        assert result.returncode == 0, result.stderr
        assert "config.toml: ok" in result.stdout
        assert "source  default: POST /webhooks/default, 1 secret (<literal>), tolerance 5m" in (
            result.stdout
        )
        assert "dev-secret-change-me" not in result.stdout

    def test_config_toml_in_the_working_directory_is_found_without_flag(self, tmp_path: Path):
        write_config(tmp_path)
        result = run_cli("check", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("config.toml: ok")

    def test_every_problem_is_listed_and_the_exit_status_is_2(self, tmp_path: Path):
        path = write_config(
            tmp_path,
            """
[server]
port = "eighty"
[sources.default]
secrets = ["env:FRAMEIOD_TEST_UNSET_VARIABLE"]
tolerance = "five"
""",
        )
        result = run_cli("check", "--config", str(path))
        assert result.returncode == 2
        *problems, last = result.stderr.strip().splitlines()
        assert last == "problems found"
        assert problems == [
            f'{path}: server.port: input should be a valid integer, got "eighty"',
            f"{path}: sources.default.secrets[0]: environment variable "
            'FRAMEIOD_TEST_UNSET_VARIABLE is not set (from "env:FRAMEIOD_TEST_UNSET_VARIABLE")',
            f'{path}: sources.default.tolerance: expected a duration like "30s" or "5m" '
            '(units ms, s, m, h), got "five"',
        ]

    def test_the_spool_line_names_the_backend_and_never_a_redis_password(self, tmp_path: Path):
        result = run_cli("check", "--config", str(write_config(tmp_path)))
        assert f"  spool   sqlite {tmp_path / 'frameiod.db'} (synchronous FULL)\n" in result.stdout
        path = write_config(
            tmp_path,
            f"""
[spool]
backend = "redis"
redis_url = "env:FRAMEIOD_TEST_REDIS_URL"
stream_prefix = "media"
[sources.default]
secrets = ["{SECRET}"]
""",
        )
        result = run_cli(
            "check",
            "--config",
            str(path),
            env={"FRAMEIOD_TEST_REDIS_URL": "redis://:hunter2@10.1.2.3:6379/0"},
        )
        assert result.returncode == 0, result.stderr
        assert "  spool   redis (env:FRAMEIOD_TEST_REDIS_URL), keys media:*\n" in result.stdout
        assert "hunter2" not in result.stdout + result.stderr

    def test_missing_config_file_is_reported(self, tmp_path: Path):
        result = run_cli("check", "--config", str(tmp_path / "nope.toml"))
        assert result.returncode == 2
        assert "nope.toml: cannot read the config file: No such file or directory" in (
            result.stderr
        )

    @pytest.mark.parametrize(
        ("reference", "why"),
        [
            ("file:/dev/zero", "(/dev/zero): it is a character device, not a regular file"),
            ("file:big.secret", "({folder}/big.secret): it is larger than 64 KiB"),
        ],
    )
    def test_a_secret_file_that_is_no_secret_is_one_line_naming_the_key(
        self, tmp_path: Path, reference: str, why: str
    ):
        (tmp_path / "big.secret").write_text("x" * (65 * 1024))
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["{reference}"]\n')
        result = run_cli("check", "--config", str(path))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        [line, _] = result.stderr.splitlines()
        assert line.startswith(
            f'{path}: sources.default.secrets[0]: cannot read "{reference}" '
            + why.format(folder=tmp_path)
        )

    def test_what_it_prints_from_the_config_is_escaped(self, tmp_path: Path):
        """A secret's file name is printed (never its value): a terminal escape or a line
        break in it shows as an escape, not as colour or a forged line."""
        (tmp_path / "web\x1b[31mhook\n.secret").write_text(SECRET)
        path = write_config(
            tmp_path, '[sources.default]\nsecrets = ["file:web\\u001b[31mhook\\n.secret"]\n'
        )
        result = run_cli("check", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
        assert "(file:web\\x1b[31mhook\\n.secret), tolerance 5m\n" in result.stdout


class TestRun:
    def test_send_gets_202_and_the_daemon_logs_the_event(self, daemon: DaemonProcess):
        result = run_cli(
            "send", "file.ready", "--config", str(daemon.config_path), "--url", daemon.url()
        )
        assert result.returncode == 0, result.stderr
        match = ACCEPTED.match(result.stdout.strip())
        assert match, result.stdout
        event_id = match[1]
        accepted = daemon.wait_for("webhook accepted", event_id=event_id)
        assert accepted["source"] == "default"
        assert accepted["event_type"] == "file.ready"
        assert accepted["status"] == 202
        assert accepted["handlers"] == 0  # no plugin loaded: nothing to run, still accepted
        assert _spooled(daemon, event_id)["type"] == "file.ready"

    def test_send_count_sends_distinct_events(self, daemon: DaemonProcess):
        result = run_cli(
            "send",
            "comment.created",
            "--count",
            "3",
            "--resource-id",
            "r-42",
            "--config",
            str(daemon.config_path),
            "--url",
            daemon.url(),
        )
        assert result.returncode == 0, result.stderr
        ids = [ACCEPTED.match(line)[1] for line in result.stdout.strip().splitlines()]
        assert len(set(ids)) == 3
        for event_id in ids:
            body = json.loads(_spooled(daemon, event_id)["body"])
            assert body["resource"]["id"] == "r-42"

    def test_forged_request_is_refused_and_send_exits_non_zero(
        self, daemon: DaemonProcess, tmp_path: Path
    ):
        forger = tmp_path / "forger"
        forger.mkdir()
        path = write_config(forger, '[sources.default]\nsecrets = ["not-the-secret"]\n')
        result = run_cli("send", "file.ready", "--config", str(path), "--url", daemon.url())
        assert result.returncode == 1
        assert result.stdout.strip() == '401 {"error": "unauthorized"}'
        rejected = daemon.wait_for("webhook rejected")
        assert (rejected["reason"], rejected["status"]) == ("signature_mismatch", 401)

    def test_send_to_nowhere_says_so(self, tmp_path: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: connections are refused
            result = run_cli(
                "send",
                "file.ready",
                "--config",
                str(write_config(tmp_path)),
                "--url",
                f"http://127.0.0.1:{port}/webhooks/default",
            )
        assert result.returncode == 1
        assert f"cannot reach http://127.0.0.1:{port}/webhooks/default" in result.stderr

    def test_send_warns_about_unknown_event_types(self, daemon: DaemonProcess):
        result = run_cli(
            "send", "file.redy", "--config", str(daemon.config_path), "--url", daemon.url()
        )
        assert result.returncode == 0
        assert "did you mean 'file.ready'?" in result.stderr

    def test_every_log_line_is_json_when_not_on_a_terminal(self, tmp_path: Path):
        path = write_config(
            tmp_path,
            f"""
[log]
format = "auto"
[sources.default]
secrets = ["{SECRET}"]
""".replace("[log]", "[server]\nport = 0\n[log]"),
        )
        process = DaemonProcess(path)
        try:
            process.port  # noqa: B018 - waits for the listening line
            assert process.stop() == 0
        finally:
            process.kill()
        assert process.raw, "no output"
        for line in process.raw:
            json.loads(line)  # raises if any line is not JSON
        lifecycle = [e["event"] for e in process.lines if e["event"] != "plugin disabled"]
        assert lifecycle == ["listening", "stopping", "stopped"]

    def test_console_format_on_a_terminal(self, tmp_path: Path):
        path = write_config(
            tmp_path,
            f"""
[server]
port = 0
[log]
format = "auto"
[sources.default]
secrets = ["{SECRET}"]
""",
        )
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [*FRAMEIOD, "run", "--config", str(path)],
            stdout=follower,
            stderr=follower,
            env={**os.environ, "FRAMEIOD_PLUGINS": ""},
        )
        os.close(follower)
        try:
            output = b""
            while b"listening" not in output:
                output += os.read(leader, 4096)
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            process.kill()
            os.close(leader)
        lines = output.decode().splitlines()
        listening = next(line for line in lines if "listening" in line)
        assert not listening.lstrip().startswith("{")
        assert "port" in listening

    def test_sigterm_finishes_the_request_in_flight_then_exits_0(self, daemon: DaemonProcess):
        port = daemon.port
        body = event_body()
        headers = signed_headers(body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request + body[:10])
            client_port = conn.getsockname()[1]
            wait_until(lambda: _server_has_read_everything(port, client_port))
            daemon.process.send_signal(signal.SIGTERM)
            daemon.wait_for("stopping")
            # The listener closes (just after the log line), but the request already in
            # flight is still served.
            wait_until(lambda: _refused(port))
            conn.sendall(body[10:])
            response = conn.recv(4096).decode()
        assert response.startswith("HTTP/1.1 202 Accepted"), response
        assert daemon.wait() == 0
        assert len(daemon.logs("webhook accepted")) == 1
        event_id = daemon.logs("webhook accepted")[0]["event_id"]
        assert _spooled(daemon, event_id)["body"] == body

    def test_sigint_also_stops_cleanly(self, daemon: DaemonProcess):
        daemon.port  # noqa: B018 - waits for the listening line
        daemon.process.send_signal(signal.SIGINT)
        assert daemon.wait() == 0
        assert daemon.logs("stopped")

    def test_port_in_use_is_a_clear_error(self, tmp_path: Path):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            process = DaemonProcess(write_config(tmp_path, port=port))
            try:
                assert process.wait() == 1
            finally:
                process.kill()
        error = process.logs("cannot listen")[0]
        assert error["port"] == port
        assert "in use" in error["error"]

    def test_a_corrupt_spool_stops_start_up_with_a_clear_message(self, tmp_path: Path):
        (tmp_path / "frameiod.db").write_bytes(b"this is not a database, it is a note" * 100)
        process = DaemonProcess(write_config(tmp_path))
        try:
            assert process.wait() == 1
        finally:
            process.kill()
        error = process.logs("cannot open the spool")[0]["error"]
        assert str(tmp_path / "frameiod.db") in error
        assert "Move it aside" in error
        # Never a silent fresh start: the file is left as it was.
        assert (tmp_path / "frameiod.db").read_bytes().startswith(b"this is not a database")

    def test_development_secret_is_refused_on_a_public_address(self, tmp_path: Path):
        path = write_config(
            tmp_path,
            """
[server]
host = "0.0.0.0"
[sources.default]
secrets = ["dev-secret-change-me"]
""",
        )
        result = run_cli("run", "--config", str(path), timeout=15)
        assert result.returncode == 2
        assert "development secret" in result.stderr
        assert '"0.0.0.0"' in result.stderr

    def test_shipped_config_serves_out_of_the_box(self, tmp_path: Path):
        text = (REPO / "config.toml").read_text().replace("port = 8080", "port = 0")
        process = DaemonProcess(write_config(tmp_path, text))
        try:
            port = process.port
            result = run_cli(
                "send",
                "file.ready",
                "--config",
                str(REPO / "config.toml"),
                "--url",
                f"http://127.0.0.1:{port}/webhooks/default",
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert ACCEPTED.match(result.stdout.strip())
        finally:
            assert process.stop() == 0
