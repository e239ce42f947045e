"""bench/writer.py, the spool writer's own work at full load (docs/performance.md): it runs
the writer's real SQL to the end, and what it reports is what it did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import BENCH, load_bench

WRITER = BENCH / "writer.py"


def test_every_event_is_accepted_claimed_and_done_and_the_backlog_still_waits(
    tmp_path: Path,
) -> None:
    writer = load_bench("writer")

    figures = writer.measure(tmp_path, backlog=50, events=60, batch=20)
    # Each batch claims as many of the oldest as it accepts: the backlog is still there.
    assert (figures["done"], figures["pending"]) == (60, 50)
    assert figures["pages_per_commit"] >= 1
    assert all(figures[step] > 0 for step in writer.STEPS)


def test_it_prints_each_step_and_the_pages_per_commit() -> None:
    printed = subprocess.run(
        [sys.executable, str(WRITER), "--backlog", "20", "--events", "40", "--batch", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert re.fullmatch(
        r"backlog 20, batches of 20: µs of CPU per event: accept [\d.]+, claim [\d.]+,"
        r" outcomes [\d.]+, commit [\d.]+ \(total [\d.]+\); [\d.]+ WAL pages per commit\n",
        printed,
    ), printed
