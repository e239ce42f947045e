"""How a handler call's outcome is judged (done, retried when, or dead) and logged: the
canonical line per call."""

from __future__ import annotations

import time
from dataclasses import dataclass

from frameiod.dispatch.retry import RetryPolicy, api_retry_delay
from frameiod.events import WebhookEvent
from frameiod.logs import get_logger
from frameiod.plugins.handlers import Outcome, WebhookHandler
from frameiod.store.base import Claimed

__all__ = ["Finished", "settle"]

log = get_logger("frameiod.dispatch")


@dataclass(frozen=True)
class Finished:
    """A call's outcome, as it is to be written to the spool."""

    item: Claimed
    handler: WebhookHandler
    event: WebhookEvent | None
    """None for a stored event that no longer parses: buried without a call."""
    outcome: Outcome
    dead: bool
    next_attempt_at: float | None


def settle(
    policy: RetryPolicy,
    item: Claimed,
    *,
    handler: WebhookHandler,
    event: WebhookEvent,
    outcome: Outcome,
    error: BaseException | None,
) -> Finished:
    """Judge one call's ``outcome`` (dead after the handler's last attempt, else retried
    after the policy's backoff, or later if a 429 asked), log it, and say what to record."""
    max_attempts = handler.max_attempts or policy.max_attempts
    dead = outcome.status != "ok" and item.attempts >= max_attempts
    retry_in = None
    if outcome.status != "ok" and not dead:
        # A 429 says when to come back; never sooner than that.
        retry_in = max(policy.delay(item.attempts), api_retry_delay(error) or 0.0)
    fields = {
        "event_id": item.event_id,
        "event_type": event.type,
        "plugin": handler.plugin,
        "handler": handler.name,
        "attempt": item.attempts,
        "outcome": "dead" if dead else outcome.status,
        "duration_ms": round(outcome.seconds * 1000, 3),
    }
    if outcome.status == "ok":
        log.info("handler finished", **fields)
    elif dead:
        log.error("handler gave up", **fields, error=outcome.error, exc_info=error)
    else:
        log.warning(
            "handler failed",
            **fields,
            error=outcome.error,
            retry_in_s=round(retry_in or 0, 3),
            exc_info=error,
        )
    return Finished(
        item,
        handler,
        event,
        outcome,
        dead,
        time.time() + retry_in if retry_in is not None else None,
    )
