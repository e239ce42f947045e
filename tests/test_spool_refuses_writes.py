"""A spool that refuses writes: no handler call repeats, and work resumes by itself.

On SQLite the fault is a full disk; on Redis, its memory limit reached.

The disk is a real one: a small tmpfs mounted for the test and filled to the last page.
SQLite reuses its WAL file's space once a checkpoint has caught up, so a write on a full
disk can still succeed by luck; the test holds a read snapshot open on the spool (as an
operator's `sqlite3` shell would), so every write must grow the WAL, and fails.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis_support import RedisServer
from support import (
    SECRET,
    DaemonProcess,
    event_body,
    install_plugin,
    signed_headers,
    wait_until,
    write_config,
)

HANDLER_KEY = "effects:side_effect"  # how the spool names the handler
HANDLER = """
import asyncio
import os

from frameiod import App

app = App()


class ComeBackLater(Exception):
    # Read like the frameio SDK's TooManyRequestsError: retried after Retry-After.
    status_code = 429
    headers = {"retry-after": "5"}


def _calls(resource):
    with open(os.environ["CALLS"]) as calls:
        return [line.split()[0] for line in calls].count(resource)


@app.on_webhook("file.ready")
async def side_effect(event):
    # One line per call: the side effect that must never repeat.
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(event.resource_id + "\\n")
    if event.resource_id.startswith("retry") and _calls(event.resource_id) == 1:
        raise ComeBackLater("first call: come back in 5 s")
    if event.resource_id.startswith("gated"):
        while not os.path.exists(os.environ["GATE"]):
            await asyncio.sleep(0.02)
"""


def _send(daemon: DaemonProcess, resource: str) -> httpx.Response:
    body = event_body(resource={"id": resource, "type": "file"})
    return httpx.post(daemon.url(), content=body, headers=signed_headers(body), timeout=10)


def _calls(calls: Path, resource: str) -> int:
    return calls.read_text().split().count(resource) if calls.exists() else 0


class FullDisk:
    """The SQLite spool on a tmpfs filled to its last page."""

    reason = "spool_full"
    rejected_detail = "the spool's disk is full"

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.spool = disk / "spool.db"
        self.snapshot: sqlite3.Connection | None = None
        self.filler = disk / "filler"

    def config(self) -> str:
        return f'[spool]\npath = "{self.spool}"\n'

    def begin(self, daemon: DaemonProcess) -> None:
        """Fill the disk so that every write of the spool fails."""
        # From here on SQLite cannot recycle its WAL; a large event uses up whatever room
        # the WAL file had left, then the disk is filled to its last page.
        self.snapshot = sqlite3.connect(f"{self.spool.as_uri()}?mode=ro", uri=True)
        self.snapshot.execute("BEGIN")
        self.snapshot.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        # Of a type no handler takes: nothing to dispatch.
        large = event_body("comment.created", padding="x" * 600_000)
        httpx.post(daemon.url(), content=large, headers=signed_headers(large), timeout=10)
        with self.filler.open("wb", buffering=0) as out:
            for size in (1 << 16, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * size)

    def end(self) -> None:
        """Give the space back."""
        self.filler.unlink(missing_ok=True)
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None

    def on_record(self, event_id: str) -> tuple[str, int]:
        """The delivery's state and attempts on record."""
        uri = f"{self.spool.as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            return conn.execute(
                "SELECT state, attempts FROM deliveries WHERE event_id = ?", (event_id,)
            ).fetchone()


class FullRedis:
    """Redis at its memory limit (``maxmemory`` with the default ``noeviction``)."""

    reason = "redis_refused"
    rejected_detail = None

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.client = redis.Redis(port=server.port)

    def config(self) -> str:
        return f'[spool]\nbackend = "redis"\nredis_url = "{self.server.url}"\n'

    def begin(self, daemon: DaemonProcess) -> None:
        """Refuse every write from now on (OOM), as a Redis that filled its memory does."""
        self.client.config_set("maxmemory", 1)

    def end(self) -> None:
        """Lift the limit."""
        self.client.config_set("maxmemory", 0)

    def on_record(self, event_id: str) -> tuple[str, int]:
        """The delivery's state and attempts on record."""
        state, attempts = self.client.hmget(
            f"frameiod:event:{event_id}", f"{HANDLER_KEY}|state", f"{HANDLER_KEY}|attempts"
        )
        return (state.decode(), int(attempts))


@pytest.fixture(params=["sqlite", "redis"])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk | FullRedis]:
    """A spool of each backend, and the real fault that makes it refuse writes."""
    if request.param == "sqlite":
        disk = FullDisk(request.getfixturevalue("small_disk"))
        yield disk
        disk.end()
        return
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield FullRedis(server)
    finally:
        server.stop()


def test_a_spool_refusing_writes_never_repeats_a_call_and_work_resumes_by_itself(
    tmp_path: Path, fault: FullDisk | FullRedis
):
    """A claim that cannot be recorded is not called; an outcome that cannot be written
    is kept, not run again; dispatch pauses (one log line, /readyz 503) and resumes by
    itself once the spool takes writes again."""
    calls, gate = tmp_path / "calls", tmp_path / "gate"
    env = {**install_plugin(tmp_path / "site", "effects", HANDLER), "CALLS": str(calls)}
    env["GATE"] = str(gate)
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
port = 0
max_body_bytes = 1048576
[log]
format = "json"
{fault.config()}
[dispatch]
backoff_initial = "1s"
backoff_max = "1s"
[sources.default]
secrets = ["{SECRET}"]
""")
    retry, gated = f"retry-{uuid.uuid4()}", f"gated-{uuid.uuid4()}"
    daemon = DaemonProcess(config, env=env, plugins="effects")
    try:
        retry_id = _send(daemon, retry).json()["id"]
        failed_at = time.monotonic()
        daemon.wait_for("handler failed", attempt=1)
        gated_id = _send(daemon, gated).json()["id"]
        wait_until(lambda: _calls(calls, gated) == 1)
        fault.begin(daemon)

        refused = _send(daemon, f"refused-{uuid.uuid4()}")
        assert (refused.status_code, refused.json()["error"]) == (503, fault.reason)
        # The retry falls due 5 s after its first call; its claim cannot be recorded.
        paused = daemon.wait_for("dispatch paused: the spool refuses writes", timeout=20)
        assert paused["reason"] == fault.reason
        ready = httpx.get(daemon.url("/readyz"), timeout=5)
        assert (ready.status_code, ready.json()["reason"]) == (503, fault.reason)
        assert "frameiod_dispatch_paused 1.0" in httpx.get(daemon.url("/metrics")).text
        # Before, every poll claimed the retry again and called it: watch a few probes.
        time.sleep(max(0.0, failed_at + 8 - time.monotonic()))
        assert _calls(calls, retry) == 1

        gate.touch()  # the gated call ends; its outcome cannot be written
        daemon.wait_for("handler outcome kept until the spool takes writes", event_id=gated_id)
        ended = len(daemon.lines)
        fault.end()
        daemon.wait_for_log(
            lambda line: line["event"] == "dispatch resumed" and daemon.lines.index(line) >= ended,
            timeout=40,
        )
        wait_until(lambda: _calls(calls, retry) == 2, timeout=20)
        daemon.wait_for("handler finished", attempt=2)
        wait_until(lambda: httpx.get(daemon.url("/readyz"), timeout=5).status_code == 200)
        assert "frameiod_dispatch_paused 0.0" in httpx.get(daemon.url("/metrics")).text
    finally:
        gate.touch()
        fault.end()
        assert daemon.stop() == 0
    # Each call is one attempt on record: nothing ran that the spool does not know of.
    assert fault.on_record(retry_id) == ("done", 2)
    assert fault.on_record(gated_id) == ("done", 1)
    assert (_calls(calls, retry), _calls(calls, gated)) == (2, 1)
    # A full disk may take a small write by luck (SQLite reuses the WAL space a failed
    # write left), and dispatch then resumes until the next refusal; Redis never does.
    paused = daemon.logs("dispatch paused: the spool refuses writes")
    resumed = daemon.logs("dispatch resumed")
    assert len(paused) == len(resumed) <= (3 if isinstance(fault, FullDisk) else 1)
    assert sum(line["outcomes_written"] for line in resumed) == 1
    assert len(daemon.logs("spool checkpoint failed")) <= 1


def test_checkpoints_failing_on_a_full_disk_are_logged_once_then_when_they_work(
    tmp_path: Path, small_disk: Path
):
    """A checkpoint that must grow the database file fails every 200 ms while the disk is
    full: one line when it starts (then one a minute), one when it works again."""
    disk = FullDisk(small_disk)
    config = write_config(tmp_path)
    text = config.read_text().replace("max_body_bytes = 4096", "max_body_bytes = 1048576")
    config.write_text(text + disk.config())
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("listening")
        disk.begin(daemon)
        assert disk.snapshot is not None
        # The snapshot gone, SQLite copies the large event's pages into the database file,
        # which must grow for them: every round now fails.
        disk.snapshot.close()
        disk.snapshot = None
        daemon.wait_for("spool checkpoint failed")
        time.sleep(2)  # about ten more rounds, each failing
        disk.end()
        cleared = daemon.wait_for("spool checkpoints work again")
    finally:
        disk.end()
        assert daemon.stop() == 0
    assert len(daemon.logs("spool checkpoint failed")) == 1
    assert cleared["failures"] >= 5
