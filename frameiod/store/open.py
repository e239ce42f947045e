"""Which spool and per-source rate limiter a daemon uses, and which spool an operator's
command opens: ``[spool] backend``.

The one place that knows there is more than one: everything else talks to
`frameiod.store.base.SpoolBackend` and `frameiod.ratelimit.SourceLimits`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frameiod.config import Config
from frameiod.ratelimit import Limits, SourceLimits
from frameiod.store.base import HandOver, Role, SpoolBackend
from frameiod.store.sqlite import Spool

if TYPE_CHECKING:
    from frameiod.store.redis import RedisSpool

__all__ = ["Backend", "coalesce_seconds", "open_backend", "open_for_operator", "open_spool"]


@dataclass(frozen=True)
class Backend:
    """An open spool, and how to build per-source limiters that match it."""

    spool: SpoolBackend
    limiter: Callable[[Limits], SourceLimits] | None = None
    """None: each process keeps its own buckets in memory."""
    handover: str = "immediate"
    """How writes reach the store, for the start-up log: "loop idle" (held until the event
    loop runs out of work, then committed together) or "immediate"."""


def coalesce_seconds(tolerances: Iterable[float]) -> float:
    """How long an identical body may join a pending twin on Redis: an event none of whose
    deliveries started need not be found again after the window Frame.io re-sends in."""
    return int(2 * max(tolerances, default=300.0)) + 60


async def open_spool(
    config: Config, *, role: Role = "daemon", handover: HandOver | None = None
) -> SpoolBackend:
    """Open the configured spool (``[spool]``) for ``role``; raise
    `frameiod.store.base.SpoolError` (or, for the operator, `QueueError`) if it cannot be
    used. ``handover`` is the event loop's idle call-back the SQLite spool batches on."""
    if config.spool.backend == "redis":
        return await _open_redis(config, role, handover)
    return await _open_sqlite(config, role, handover)


async def _open_sqlite(config: Config, role: Role, handover: HandOver | None) -> Spool:
    path = config.resolve_path(config.spool.path)
    return await Spool.open(path, config.spool.synchronous, handover=handover, role=role)


async def _open_redis(config: Config, role: Role, handover: HandOver | None) -> RedisSpool:
    # Imported only here: redis is an optional dependency (frameiod[redis]).
    from frameiod.store.redis import RedisSpool  # noqa: PLC0415

    return await RedisSpool.open(
        config.spool.redis_url.reveal(),
        config.spool.stream_prefix,
        role=role,
        handler_timeout=config.dispatch.handler_timeout,
        coalesce_seconds=coalesce_seconds(s.tolerance for s in config.sources.values()),
        handover=handover,
    )


async def open_backend(config: Config, handover: HandOver | None = None) -> Backend:
    """Open the configured spool for the daemon, which gives the event loop's ``handover``
    (see `frameiod.store.base.HandOver`); raise `frameiod.store.base.SpoolError` if it
    cannot be used."""
    if config.spool.backend == "redis":
        # Imported only here: redis is an optional dependency (frameiod[redis]).
        from frameiod.store.redis_ratelimit import RedisSourceLimiter  # noqa: PLC0415

        redis_spool = await _open_redis(config, "daemon", handover)
        url, prefix = config.spool.redis_url.reveal(), config.spool.stream_prefix
        # The receivers that share the spool share their rate limits too, in the same Redis.
        limiter = functools.partial(RedisSourceLimiter, redis_spool.client, url, prefix)
        return Backend(redis_spool, limiter, handover=redis_spool.handover)
    spool = await _open_sqlite(config, "daemon", handover)
    return Backend(spool, handover=spool.handover)


async def open_for_operator(config: Config) -> SpoolBackend:
    """Open the configured spool for the operator's actions (``frameiod queue``), beside a
    daemon that may be running: none of the daemon's start-up work is done. Raise
    `frameiod.store.base.QueueError` (or `SpoolError`) if it cannot be used."""
    return await open_spool(config, role="operator")
