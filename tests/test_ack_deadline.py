"""A spool held up answers inside Frame.io's window: 503 at ``[server] ack_deadline``.

The holds are real: another process holding SQLite's write lock, a ``redis-server``
stopped with SIGSTOP. A request cut off is kept whole or not at all, so the resend that
Frame.io makes is handled exactly once.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from redis_support import RedisServer
from support import SECRET, DaemonProcess, event_body, install_plugin, signed_headers, wait_until

RECORDER = """
import os

from frameiod import App

app = App()


@app.on_webhook("file.ready")
def record(event):
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(event.resource_id + "\\n")
"""


def _start(tmp_path: Path, spool: str) -> tuple[DaemonProcess, Path]:
    calls = tmp_path / "calls"
    env = {**install_plugin(tmp_path / "site", "recorder", RECORDER), "CALLS": str(calls)}
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
port = 0
ack_deadline = "0.5s"
[log]
format = "json"
{spool}
[sources.default]
secrets = ["{SECRET}"]
""")
    daemon = DaemonProcess(config, env=env, plugins="recorder")
    daemon.wait_for("listening")
    return daemon, calls


def _post(daemon: DaemonProcess, body: bytes, headers: dict[str, str]) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = httpx.post(daemon.url(), content=body, headers=headers, timeout=10)
    return response.status_code, dict(response.headers), time.monotonic() - started


def test_a_lock_held_by_another_process_is_answered_503_at_the_deadline(tmp_path: Path):
    """Another process holds the spool's write lock past the deadline: 503 spool_busy with
    Retry-After after about 0.5 s (not SQLite's 5-s busy wait), nothing of the request kept,
    and its resend after the lock is gone accepted and handled once."""
    spool = tmp_path / "spool.db"
    daemon, calls = _start(tmp_path, f'[spool]\npath = "{spool}"')
    holder = sqlite3.connect(spool, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        body = event_body(resource={"id": "held-up", "type": "file"})
        headers = signed_headers(body)
        status, answer_headers, seconds = _post(daemon, body, headers)
        assert status == 503
        assert answer_headers["retry-after"]
        assert seconds < 2.5  # the deadline is 0.5 s; SQLite alone would wait 5 s
        rejected = daemon.wait_for("webhook rejected", reason="spool_busy")
        assert "0.5s acknowledgement deadline" in rejected["detail"]
        holder.execute("ROLLBACK")  # the writer's batch now goes ahead, without it

        status, _, _ = _post(daemon, body, headers)  # Frame.io's resend: the same request
        assert status == 202
        wait_until(lambda: calls.exists() and calls.read_text().split() == ["held-up"])
        kept = holder.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        holder.close()
        assert daemon.stop() == 0
    assert kept == 1
    assert calls.read_text().split() == ["held-up"]


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_a_stalled_redis_is_answered_503_at_the_deadline(tmp_path: Path, redis_server):
    """Redis stopped (SIGSTOP): 503 spool_busy after about 0.5 s, before redis-py's own 2-s
    timeout; after SIGCONT the resend is accepted or answered duplicate (the script ran
    whole once Redis woke) and the event is handled exactly once."""
    daemon, calls = _start(
        tmp_path, f'[spool]\nbackend = "redis"\nredis_url = "{redis_server.url}"'
    )
    assert redis_server.process is not None
    body = event_body(resource={"id": "stalled", "type": "file"})
    headers = signed_headers(body)
    try:
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            status, answer_headers, seconds = _post(daemon, body, headers)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert status == 503
        assert answer_headers["retry-after"]
        assert seconds < 1.9
        daemon.wait_for("webhook rejected", reason="spool_busy")

        def resend() -> bool:
            return _post(daemon, body, headers)[0] in (200, 202)

        wait_until(resend, timeout=15)
        wait_until(lambda: calls.exists() and "stalled" in calls.read_text(), timeout=15)
        # Every further resend is a duplicate, and nothing is handled twice.
        assert _post(daemon, body, headers)[0] == 200
    finally:
        assert daemon.stop() == 0
    assert calls.read_text().split() == ["stalled"]
