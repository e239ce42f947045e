"""The durable floor: ``frameiod run`` with its spool's SQL replaced by a bare log.

Usage: floor.py LOG run --config CONFIG (``make bench`` starts it as the target
``durable-floor``).

Everything of frameiod runs as usual (verification, parsing, the hold until the loop is
idle, the writer thread) except what the writer does with a batch: instead of SQLite's
transaction, each accepted request's id, signature and body are written to ``LOG`` in one
``pwrite`` and made durable with one ``fdatasync``, as an append-only log on the
acknowledgement path would. ``LOG`` is written through once before the server starts and
then round and round, so no write grows the file: the cheapest ``fdatasync`` this disk has.

It keeps none of the spool's promises (no duplicate check, no deliveries, no recovery) and
is no design for frameiod; it measures how close frameiod's real spool is to the least a
durable acknowledgement can cost on this machine, with the rest of frameiod unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from frameiod.cli.main import main as frameiod_main
from frameiod.store.base import Accepted, Incoming
from frameiod.store.sqlite import Spool
from frameiod.store.sqlite.writer import Job, Writer

_LOG_BYTES = 64 * 1024 * 1024


class _Log:
    """A file of fixed size, written round and round, each append made durable."""

    def __init__(self, path: str) -> None:
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(1024 * 1024)
        for _ in range(_LOG_BYTES // len(zeros)):
            os.write(self.descriptor, zeros)
        os.fsync(self.descriptor)
        self.offset = 0

    def append(self, data: bytes) -> None:
        """Write ``data`` at the next offset (the start, once the end is reached); fdatasync."""
        if self.offset + len(data) > _LOG_BYTES:
            self.offset = 0
        os.pwrite(self.descriptor, data, self.offset)
        self.offset += len(data)
        os.fdatasync(self.descriptor)


class _Append:
    """An accept's operation: its record for the log, and the answer once it is durable."""

    def __init__(self, record: bytes, accepted: Accepted) -> None:
        self.record = record
        self.accepted = accepted

    def __call__(self, _connection: object) -> Accepted:
        return self.accepted


def main(argv: Sequence[str]) -> int:
    """Run ``frameiod`` with ``argv[1:]``, its spool's accepts written to the log ``argv[0]``."""
    log = _Log(argv[0])
    transaction = Writer._run_batch

    async def accept(spool: Spool, incoming: Incoming, handlers: Sequence[str]) -> Accepted:
        record = b"%s %s\n%s\n" % (incoming.id.encode(), incoming.signature.encode(), incoming.body)
        return await spool.run(_Append(record, Accepted(incoming.id, False, len(handlers))))

    def run_batch(writer: Writer, batch: list[Job]) -> None:
        logged: list[Job] = []
        appends: list[_Append] = []
        others: list[Job] = []  # the daemon's own writes (a flush at shutdown): SQLite's
        for job in batch:
            if isinstance(job[0], _Append):
                logged.append(job)
                appends.append(job[0])
            else:
                others.append(job)
        if others:
            transaction(writer, others)
        if appends:
            log.append(b"".join(append.record for append in appends))
            writer.batches += 1
            writer._settle(logged, [(True, append.accepted) for append in appends])

    Spool.accept = accept  # type: ignore[method-assign]
    Writer._run_batch = run_batch  # type: ignore[method-assign]
    return frameiod_main(list(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
