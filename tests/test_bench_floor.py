"""bench/floor.py, the durable floor `make bench` measures: frameiod whose accepts go to a
bare log instead of SQLite. Patching frameiod's internals by name fails silently when they
change (the floor would measure the real spool), so this checks it still takes effect."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import httpx
from support import DaemonProcess, event_body, signed_headers, write_config

FLOOR = Path(__file__).resolve().parent.parent / "bench" / "floor.py"


def test_accepts_are_written_to_the_log_and_not_to_the_spool(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # the spool is frameiod.db beside it
    spool, log = tmp_path / "frameiod.db", tmp_path / "floor.log"
    daemon = DaemonProcess(config, frameiod=[sys.executable, str(FLOOR), str(log)])
    try:
        bodies = [event_body(resource={"id": f"floor-{n}", "type": "file"}) for n in range(3)]
        answers = []
        for body in bodies:
            headers = signed_headers(body)
            answer = httpx.post(daemon.url(), content=body, headers=headers, timeout=10)
            assert answer.status_code == 202, answer.text
            answers.append((answer.json()["id"], headers["X-Frameio-Signature"], body))
    finally:
        assert daemon.stop() == 0

    written = log.read_bytes()
    # Made once at its full size, written from the start, never grown.
    assert len(written) == 64 * 1024 * 1024
    expected = b"".join(b"%s %s\n%s\n" % (i.encode(), s.encode(), b) for i, s, b in answers)
    assert written.startswith(expected)
    assert written[len(expected) :].strip(b"\0") == b""
    with sqlite3.connect(spool) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
