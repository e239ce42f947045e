"""The spool writer's own work, without HTTP: its CPU per event at each step, and the pages
each commit writes to the WAL, while a backlog of deliveries waits.

``python bench/writer.py --backlog 20000`` fills a fresh spool (in a temporary folder, with
the daemon's own connection settings and schema) with ``--backlog`` waiting events of one
handler, then runs ``--events`` more through the writer's own SQL in batches of
``--batch``, as the daemon does at full load: each batch is one transaction that accepts
its events (their deliveries pending), claims as many of the oldest waiting deliveries,
records their outcomes, and commits at ``synchronous = FULL``. It prints the CPU per event
of each step (``time.thread_time``) and the pages each commit wrote to the WAL.

docs/performance.md ("Where the time goes") reads from it what a backlog costs each
commit: an index keyed by something random (a hash) would have each accept insert into a
random page of it and each claim delete from another, so compare ``--backlog 0`` with
``--backlog 20000``, and a schema change in both checkouts.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

# The frameiod of the checkout this file is in, whatever else is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frameiod.ids import new_event_id
from frameiod.store.base import Incoming
from frameiod.store.sqlite import operations
from frameiod.store.sqlite.schema import connect_writer
from frameiod.store.sqlite.unstarted import Unstarted

HANDLER = "bench:noop"
STEPS = ("accept", "claim", "outcomes", "commit")
# Events signed per second. Frame.io signs each delivery as it sends it, so timestamps
# rise with the stream; one timestamp for all would scatter the request index (led by the
# timestamp) over pages a live stream never touches.
PER_SECOND = 2000


def incoming(number: int, signed_at: int) -> Incoming:
    """A distinct event, as the server hands it to the spool, signed at ``signed_at``."""
    body = json.dumps(
        {
            "type": "file.ready",
            "account": {"id": str(uuid.uuid4())},
            "workspace": {"id": str(uuid.uuid4())},
            "project": {"id": str(uuid.uuid4())},
            "resource": {"id": f"writer-{number}-{uuid.uuid4()}", "type": "file"},
            "user": {"id": str(uuid.uuid4())},
        }
    ).encode()
    return Incoming(
        id=new_event_id(),
        source="default",
        type="file.ready",
        body=body,
        timestamp=signed_at,
        signature="v0=" + uuid.uuid4().hex + uuid.uuid4().hex,
        secret_id="bench",  # noqa: S106 - the id of a secret, not one
        received_at=time.time(),
    )


def _wal_pages(conn: sqlite3.Connection) -> int:
    """Pages the WAL holds since the last call, which empties it."""
    pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(pages)


def measure(folder: Path, *, backlog: int, events: int, batch: int) -> dict[str, float]:
    """Run the workload in a spool in ``folder``; return µs of CPU per event for each of
    `STEPS`, ``pages_per_commit``, and the deliveries ``done`` and ``pending`` at the end."""
    conn = connect_writer(folder / "frameiod.db", "FULL")
    unstarted = Unstarted()
    try:
        first = int(time.time()) - (backlog + events) // PER_SECOND
        stream = (incoming(n, first + n // PER_SECOND) for n in range(backlog + events))
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(backlog):
                operations.accept(conn, next(stream), [HANDLER], unstarted)
        _wal_pages(conn)
        arriving = list(stream)
        spent = dict.fromkeys(STEPS, 0.0)
        pages = commits = 0
        clock = time.thread_time
        for start in range(0, events, batch):
            marks = [clock()]
            conn.execute("BEGIN IMMEDIATE")
            for event in arriving[start : start + batch]:
                operations.accept(conn, event, [HANDLER], unstarted)
            marks.append(clock())
            claimed = operations.claim(conn, batch, {HANDLER: batch}, time.time(), unstarted)
            marks.append(clock())
            now = time.time()
            rows = [("done", "ok", None, 0.001, None, now, c.delivery_id) for c in claimed]
            operations.finish(conn, rows)
            marks.append(clock())
            conn.commit()
            marks.append(clock())
            for step, began, ended in zip(STEPS, marks, marks[1:], strict=False):
                spent[step] += ended - began
            pages += _wal_pages(conn)
            commits += 1
        states = dict(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))
    finally:
        conn.close()
    figures = {step: seconds * 1e6 / events for step, seconds in spent.items()}
    figures["pages_per_commit"] = pages / commits
    figures["done"] = states.get("done", 0)
    figures["pending"] = states.get("pending", 0)
    return figures


def main() -> int:
    """Measure once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=20_000, help="deliveries waiting")
    parser.add_argument("--events", type=int, default=15_000, help="events measured")
    parser.add_argument("--batch", type=int, default=20, help="events per transaction")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="frameiod-writer-") as folder:
        figures = measure(Path(folder), backlog=args.backlog, events=args.events, batch=args.batch)
    steps = ", ".join(f"{step} {figures[step]:.1f}" for step in STEPS)
    print(
        f"backlog {args.backlog}, batches of {args.batch}: µs of CPU per event: {steps}"
        f" (total {sum(figures[step] for step in STEPS):.1f});"
        f" {figures['pages_per_commit']:.1f} WAL pages per commit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
