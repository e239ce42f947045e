"""A full disk under the spool: no handler call repeats, and work resumes by itself.

The disk is a real one: a small tmpfs mounted for the test and filled to the last page.
SQLite reuses its WAL file's space once a checkpoint has caught up, so a write on a full
disk can still succeed by luck; the test holds a read snapshot open on the spool (as an
operator's `sqlite3` shell would), so every write must grow the WAL, and fails.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import SECRET, DaemonProcess, event_body, install_plugin, signed_headers, wait_until

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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def _send(daemon: DaemonProcess, resource: str) -> httpx.Response:
    body = event_body(resource={"id": resource, "type": "file"})
    return httpx.post(daemon.url(), content=body, headers=signed_headers(body), timeout=10)


def _calls(calls: Path, resource: str) -> int:
    return calls.read_text().split().count(resource) if calls.exists() else 0


def _deliveries(spool: Path) -> dict[str, tuple[str, int]]:
    """State and attempts on record, per resource id."""
    with contextlib.closing(sqlite3.connect(f"{spool.as_uri()}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT e.body, d.state, d.attempts FROM deliveries d"
            " JOIN events e ON e.id = d.event_id"
        ).fetchall()
    return {json.loads(body)["resource"]["id"]: (state, attempts) for body, state, attempts in rows}


def test_a_full_disk_never_repeats_a_call_and_work_resumes_when_space_returns(
    tmp_path: Path, small_disk: Path
):
    """A claim whose mark cannot be written is not called; an outcome that cannot be
    written is kept, not run again; dispatch pauses (one log line, /readyz 503) and
    resumes by itself once space returns."""
    calls, gate, spool = tmp_path / "calls", tmp_path / "gate", small_disk / "spool.db"
    env = {**install_plugin(tmp_path / "site", "effects", HANDLER), "CALLS": str(calls)}
    env["GATE"] = str(gate)
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
port = 0
max_body_bytes = 1048576
[log]
format = "json"
[spool]
path = "{spool}"
[dispatch]
backoff_initial = "1s"
backoff_max = "1s"
[sources.default]
secrets = ["{SECRET}"]
""")
    retry, gated = f"retry-{uuid.uuid4()}", f"gated-{uuid.uuid4()}"
    daemon = DaemonProcess(config, env=env, plugins="effects")
    daemon.wait_for("listening")
    snapshot = sqlite3.connect(f"{spool.as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        assert _send(daemon, retry).status_code == 202
        failed_at = time.monotonic()
        daemon.wait_for("handler failed", attempt=1)
        gated_id = _send(daemon, gated).json()["id"]
        wait_until(lambda: _calls(calls, gated) == 1)
        # From here on SQLite cannot recycle its WAL; a large event uses up whatever room
        # the WAL file had left, then the disk is filled to its last page.
        snapshot.execute("BEGIN")
        snapshot.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        large = event_body(resource={"id": "large", "type": "file"}, padding="x" * 600_000)
        httpx.post(daemon.url(), content=large, headers=signed_headers(large), timeout=10)
        filler = _fill(small_disk)

        refused = _send(daemon, f"refused-{uuid.uuid4()}")
        assert refused.status_code == 503
        assert refused.json()["detail"] == "the spool's disk is full"
        # The retry falls due 5 s after its first call; its claim cannot be marked.
        paused = daemon.wait_for("dispatch paused: the spool refuses writes", timeout=20)
        assert paused["reason"] == "spool_full"
        ready = httpx.get(daemon.url("/readyz"), timeout=5)
        assert (ready.status_code, ready.json()["reason"]) == (503, "spool_full")
        # Before, every poll claimed the retry again and called it: watch a few probes.
        time.sleep(max(0.0, failed_at + 8 - time.monotonic()))
        assert _calls(calls, retry) == 1

        gate.touch()  # the gated call ends; its outcome cannot be written
        kept = daemon.wait_for("handler outcome kept until the spool takes writes")
        assert kept["event_id"] == gated_id
        filler.unlink()
        snapshot.execute("ROLLBACK")
        resumed = daemon.wait_for("dispatch resumed", timeout=40)
        assert resumed["outcomes_written"] == 1
        wait_until(lambda: _calls(calls, retry) == 2, timeout=20)
        daemon.wait_for("handler finished", attempt=2)
        wait_until(lambda: httpx.get(daemon.url("/readyz"), timeout=5).status_code == 200)
        on_record = _deliveries(spool)
    finally:
        gate.touch()
        snapshot.close()
        assert daemon.stop() == 0
    # Each call is one attempt on record: nothing ran that the spool does not know of.
    assert on_record[retry] == ("done", 2)
    assert on_record[gated] == ("done", 1)
    assert (_calls(calls, retry), _calls(calls, gated)) == (2, 1)
    assert len(daemon.logs("dispatch paused: the spool refuses writes")) == 1
    assert len(daemon.logs("spool checkpoint failed")) <= 1
