"""Which spool and per-source rate limiter a daemon uses, and which spool an operator's
command opens: ``[spool] backend``.

The one place that knows there is more than one: everything else talks to
`frameiod.store.base.SpoolBackend` and `frameiod.http.ratelimit.SourceLimits`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from frameiod.config import Config
from frameiod.http.ratelimit import Limits, SourceLimits
from frameiod.store.base import SpoolBackend
from frameiod.store.sqlite import Spool

__all__ = ["Backend", "open_backend", "open_for_operator"]


@dataclass(frozen=True)
class Backend:
    """An open spool, and how to build per-source limiters that match it."""

    spool: SpoolBackend
    limiter: Callable[[Limits], SourceLimits] | None = None
    """None: each process keeps its own buckets in memory."""


async def open_backend(config: Config) -> Backend:
    """Open the configured spool; raise `frameiod.store.base.SpoolError` if it cannot be used."""
    if config.spool.backend == "redis":
        # Imported only here: redis is an optional dependency (frameiod[redis]).
        from frameiod.store.redis import RedisSpool  # noqa: PLC0415

        redis_spool = await RedisSpool.open(config)
        return Backend(redis_spool, redis_spool.source_limiter)
    path = config.resolve_path(config.spool.path)
    return Backend(await Spool.open(path, config.spool.synchronous))


async def open_for_operator(config: Config) -> SpoolBackend:
    """Open the configured spool for the operator's actions (``frameiod queue``), beside a
    daemon that may be running: none of the daemon's start-up work is done. Raise
    `frameiod.store.base.QueueError` (or `SpoolError`) if it cannot be used."""
    if config.spool.backend == "redis":
        from frameiod.store.redis import RedisSpool  # noqa: PLC0415

        return await RedisSpool.open(config, role="operator")
    return await Spool.open(config.resolve_path(config.spool.path), role="operator")
