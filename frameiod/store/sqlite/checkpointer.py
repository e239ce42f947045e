"""The checkpointer thread: it copies the write-ahead log back into the spool file beside
the writer's commits, from a connection of its own."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from frameiod.logs import LastingFault, get_logger
from frameiod.store.sqlite.schema import Synchronous

__all__ = ["Checkpointer"]

log = get_logger("frameiod.spool")

# How often a checkpoint runs; the writer's automatic one (`AUTOCHECKPOINT_PAGES`) is only
# a backstop should this thread fall behind.
_CHECKPOINT_SECONDS = 0.2


class Checkpointer(threading.Thread):
    """Copies the WAL back into the database file from a connection of its own.

    Left to itself, SQLite checkpoints inside the commit that crosses 1000 WAL pages, with
    its fsyncs: every few seconds under load one batch of 202s waited for it. A PASSIVE
    checkpoint here runs beside the writer's commits instead of inside one.
    """

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        super().__init__(name="frameiod-spool-checkpoint", daemon=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.stopping = threading.Event()

    def run(self) -> None:
        # A full disk fails every round until space returns: logged once, then once a minute.
        failing = LastingFault(log, "spool checkpoint failed")
        while not self.stopping.wait(_CHECKPOINT_SECONDS):
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # busy, or a disk error: the next round tries again
                failing.failed(detail=str(exc))
            else:
                failing.cleared("spool checkpoints work again")
        self.conn.close()
