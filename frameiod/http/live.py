"""What a reload replaces: the sources with their secrets, the limiters, the proxies trusted.

A request takes the `Live` in force once, at its start, so it never sees half of an old
configuration and half of a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frameiod.config import Config
from frameiod.plugins.routing import Routes
from frameiod.ratelimit import (
    AddressLimiter,
    Clock,
    Limits,
    Networks,
    SourceLimiter,
    SourceLimits,
    client_address,
    networks,
)
from frameiod.secret_ids import secret_id

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Live", "SourceKeys", "source_keys"]


@dataclass(frozen=True)
class SourceKeys:
    """What verifying a source's deliveries takes: its secrets (configured ones first, then
    those declared on its handlers), their routing tags, and the clock tolerance."""

    secrets: tuple[str, ...]
    ids: tuple[str, ...]
    tolerance: float


def source_keys(config: Config, routes: Routes) -> dict[str, SourceKeys]:
    """Every source the daemon accepts: configured ones, plus any a handler's secret implies."""
    configured = {name: source.secret_values() for name, source in config.sources.items()}
    return {
        name: SourceKeys(
            secrets=tuple(secrets),
            ids=tuple(secret_id(secret) for secret in secrets),
            tolerance=config.source(name).tolerance,
        )
        for name, secrets in routes.merged_secrets(configured).items()
    }


@dataclass(frozen=True)
class Live:
    """What a reload replaces, as one object (see the module docstring)."""

    config: Config
    sources: Mapping[str, SourceKeys]
    limiter: SourceLimits
    addresses: AddressLimiter
    proxies: Networks
    """``[server] trusted_proxies``, parsed once (every request asks who sent it)."""

    def sender(self, request: web.BaseRequest) -> str:
        """The address held responsible for ``request``: its peer, or behind a trusted
        proxy the nearest hop of every ``X-Forwarded-For`` line (`client_address`)."""
        return client_address(
            request.remote, request.headers.getall("X-Forwarded-For", ()), self.proxies
        )

    @classmethod
    def build(
        cls,
        config: Config,
        routes: Routes,
        clock: Clock = time.monotonic,
        limiter: Callable[[Limits], SourceLimits] | None = None,
        previous: Live | None = None,
    ) -> Live:
        """Everything derived from ``config`` (and the secrets ``routes`` declare).

        ``limiter`` builds the per-source limiter (default: in memory, on ``clock``). On a
        reload, the ``previous`` Live's limiters in memory hand on what each source and
        address has left, under the new limits: a reload changes limits, it does not
        refill them (a shared limiter keeps its state in its store).
        """
        sources = source_keys(config, routes)
        limits = {name: (config.source(name).rate, config.source(name).burst) for name in sources}
        server = config.server
        budget = (server.unauthenticated_failures, server.max_tracked_addresses)
        if limiter is not None:
            source_limits = limiter(limits)
        elif previous is not None and isinstance(previous.limiter, SourceLimiter):
            source_limits = previous.limiter.reloaded(limits)
        else:
            source_limits = SourceLimiter(limits, clock)
        return cls(
            config=config,
            sources=sources,
            limiter=source_limits,
            addresses=(
                previous.addresses.reloaded(*budget)
                if previous is not None
                else AddressLimiter(*budget, clock)
            ),
            proxies=networks(server.trusted_proxies),
        )
