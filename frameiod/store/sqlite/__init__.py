"""The durable spool: accepted events and their per-handler deliveries, in one SQLite file.

An event is committed, with one delivery row per matching handler, before the 202 goes
out. All SQLite work runs on one writer thread that owns the connection (`writer`);
operations that arrive while it is busy form the next batch and share one transaction and
one fsync (group commit), so throughput does not collapse to one fsync per request. When
the daemon gives the spool a hand-over (`frameiod.store.base.HandOver`: its event loop
calls back when it has taken in every request that has arrived, or after a short hold while
it stays busy), operations are handed to the writer together then: a request that is
already here does not miss the commit and wait for the next one. Without one, or on a loop
the hand-over cannot serve, each operation goes to the writer at once.

A claim finds due deliveries and marks them "running" (their attempt counted) in one
operation of the writer's batch, so a handler is called only once its claim is on record,
and no thread beyond the writer is woken for it; the dispatcher's other reads (when the
next delivery is due) join the batch too. A second, read-only connection (WAL lets it read
while the writer commits) serves the operator's actions.

The modules: `spool` (the `Spool` API), `schema` (the file's schema, its upgrades and its
connections), `files` (permissions), `writer` (the writer thread), `checkpointer` (the
WAL's checkpoints), `operations` (the daemon's SQL), `actions` (the operator's SQL).
"""

from __future__ import annotations

from frameiod.store.sqlite.files import PRIVATE_MODE
from frameiod.store.sqlite.schema import APPLICATION_ID, SCHEMA_VERSION, Synchronous, body_hash
from frameiod.store.sqlite.spool import Spool

__all__ = ["APPLICATION_ID", "PRIVATE_MODE", "SCHEMA_VERSION", "Spool", "Synchronous", "body_hash"]
