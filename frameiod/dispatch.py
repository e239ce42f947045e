"""The dispatcher: takes accepted events from the spool and hands them to handlers.

Until handler plugins exist, handing over means one log line per event, so an operator
sees every accepted event leave the queue.
"""

from __future__ import annotations

import time

import structlog

from frameiod.spool import Spool

__all__ = ["Dispatcher"]

log = structlog.get_logger("frameiod.dispatch")


class Dispatcher:
    """Consumes ``spool`` until it is closed and drained."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.dispatched = 0

    async def run(self) -> None:
        """Dispatch every envelope, in order; returns once the spool is closed and empty."""
        while (envelope := await self._spool.get()) is not None:
            event = envelope.event
            self.dispatched += 1
            log.info(
                "event dispatched",
                event_id=envelope.id,
                source=envelope.source,
                event_type=event.type,
                resource_id=event.resource_id,
                account_id=event.account_id,
                queued_ms=round((time.time() - envelope.received_at) * 1000, 3),
            )
