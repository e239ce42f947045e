"""The dispatcher's pause while the spool refuses writes, and the pace of its probes.

A handler is called only once its claim is on record; while the store refuses writes
nothing can be on record, so the dispatcher claims nothing and probes the store with a
growing interval instead.
"""

from __future__ import annotations

import time

from frameiod.logs import LastingFault, get_logger
from frameiod.metrics import Metrics
from frameiod.store.base import SpoolUnavailable

__all__ = ["PROBE_FIRST_SECONDS", "PROBE_KEEPING_SECONDS", "PROBE_MAX_SECONDS", "WritePause"]

log = get_logger("frameiod.dispatch")

PROBE_FIRST_SECONDS = 0.5
PROBE_MAX_SECONDS = 30.0
PROBE_KEEPING_SECONDS = 1.0
"""The longest wait between probes while outcomes of calls are kept. On Redis another
receiver takes a delivery whose lease ran out once Redis takes writes again, and would
run its call a second time: the sooner a kept outcome is written, the narrower that
window."""


class WritePause:
    """Whether dispatch is paused, how long to wait before the next probe, and what the
    operator sees of it (log lines, ``frameiod_dispatch_paused``)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._fault = LastingFault(log, "dispatch paused: the spool refuses writes")
        self._metrics = metrics
        self.probe_in = PROBE_FIRST_SECONDS
        """Seconds to wait before the next probe."""
        self._resumed_at = float("-inf")

    @property
    def active(self) -> bool:
        """True while dispatch is paused."""
        return self._fault.active

    def begin(self, exc: SpoolUnavailable) -> None:
        """The store refused a write: pause (logged when it begins, then at most once a
        minute while it lasts)."""
        # A full disk can take a small write now and then (SQLite reuses WAL space a failed
        # write left): a pause soon after a resume is the same fault, and keeps its pace.
        if not self._fault.active and time.monotonic() - self._resumed_at > PROBE_MAX_SECONDS:
            self.probe_in = PROBE_FIRST_SECONDS
        self._fault.failed("error", reason=exc.reason, detail=exc.detail)
        if self._metrics is not None:
            self._metrics.dispatch_paused.set(1)

    def wait(self, keeping: bool) -> float:
        """Seconds until the next probe; at most `PROBE_KEEPING_SECONDS` while outcomes
        are ``keeping``."""
        return min(self.probe_in, PROBE_KEEPING_SECONDS) if keeping else self.probe_in

    def probe_failed(self, exc: SpoolUnavailable) -> None:
        """A probe failed: wait twice as long next time, up to `PROBE_MAX_SECONDS`."""
        self.probe_in = min(self.probe_in * 2, PROBE_MAX_SECONDS)
        self._fault.failed("error", reason=exc.reason, detail=exc.detail)

    def resumed(self, outcomes_written: int) -> None:
        """A probe succeeded and the kept outcomes are written: dispatch goes on."""
        self._resumed_at = time.monotonic()
        self._fault.cleared("dispatch resumed", outcomes_written=outcomes_written)
        if self._metrics is not None:
            self._metrics.dispatch_paused.set(0)
