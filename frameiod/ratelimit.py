"""Token buckets: per source for verified deliveries, per address for refused requests.

Pure and clock-injected, so tests drive time. Frame.io gives a delivery only 5 attempts,
so a 429 costs the sender one of them: the per-source limit counts only deliveries that
passed the signature check (forged traffic cannot spend a real source's budget), and the
per-address limit counts only refusals, so it stops a misbehaving sender early without
touching well-behaved ones.

`SourceLimits` is the interface the server uses for the per-source limit: `SourceLimiter`
(here, in memory) serves one process; `frameiod.store.redis.RedisSourceLimiter` shares one
bucket per source among every receiver on a Redis.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "AddressLimiter",
    "Limits",
    "Networks",
    "SourceLimiter",
    "SourceLimits",
    "TokenBucket",
    "client_address",
    "is_within",
    "networks",
    "retry_after_header",
]

Clock = Callable[[], float]
Limits = Mapping[str, tuple[float, int]]
"""``rate`` (per second) and ``burst`` by source name."""


class SourceLimits(Protocol):
    """The per-source limit on verified deliveries."""

    async def take(self, source: str) -> float:
        """0 if this delivery may pass, else the seconds until the source may send again.

        Raises `frameiod.store.base.SpoolUnavailable` if the shared state cannot be reached.
        """
        ...

    def taken_on_accept(self, source: str) -> tuple[float, int] | None:
        """The source's limit when the store takes a webhook's token in the same write as
        the accept (`frameiod.store.base.Incoming.limit`), and the server must not call
        `take` for it; None when the server calls `take`."""
        ...


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> TokenBucket:
        """A bucket that starts with every token."""
        return cls(rate, capacity, capacity, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 when one is there now); takes nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def available(self, now: float) -> int:
        """Whole tokens there now."""
        self._refill(now)
        return int(self.tokens)

    def spend(self, count: int, now: float) -> None:
        """Take ``count`` tokens that `available` said were there."""
        self._refill(now)
        self.tokens -= count

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one is there."""
        waiting = self.wait(now)
        if waiting == 0:
            self.tokens -= 1
        return waiting

    def resized(self, rate: float, capacity: float, now: float) -> TokenBucket:
        """A bucket of a new ``rate`` and ``capacity`` holding what this one holds now
        (at most the new capacity): a reload changes a limit, it does not refill it."""
        self._refill(now)
        return TokenBucket(rate, capacity, min(self.tokens, capacity), now)


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class SourceLimiter:
    """One bucket per source: ``rate`` verified deliveries per second, bursts of ``burst``."""

    def __init__(self, limits: Limits, clock: Clock = time.monotonic) -> None:
        now = clock()
        self._clock = clock
        self._buckets = {
            name: TokenBucket.full(rate, burst, now) for name, (rate, burst) in limits.items()
        }

    async def take(self, source: str) -> float:
        """0 if this delivery may pass, else the seconds until the source may send again."""
        bucket = self._buckets.get(source)
        return bucket.take(self._clock()) if bucket else 0.0

    def taken_on_accept(self, source: str) -> None:
        """None: in memory, `take` costs nothing worth folding into the accept."""

    def reloaded(self, limits: Limits) -> SourceLimiter:
        """A limiter of new ``limits`` in which each source keeps the tokens it has left."""
        limiter = SourceLimiter(limits, self._clock)
        now = self._clock()
        for name, bucket in limiter._buckets.items():
            if (old := self._buckets.get(name)) is not None:
                limiter._buckets[name] = old.resized(bucket.rate, bucket.capacity, now)
        return limiter


class AddressLimiter:
    """Refused requests per client address: ``per_minute`` of them, then 429 until the
    budget refills. At most ``max_tracked`` addresses are remembered (least recently seen
    go first), so a flood from many addresses cannot grow memory without bound."""

    def __init__(self, per_minute: int, max_tracked: int, clock: Clock = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(per_minute)
        self._max_tracked = max_tracked
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def blocked(self, address: str) -> float:
        """Seconds this address must wait before it is heard again (0: not blocked)."""
        bucket = self._buckets.get(address)
        return bucket.wait(self._clock()) if bucket else 0.0

    def refused(self, address: str) -> None:
        """Count one refused request against ``address``."""
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket.full(self._rate, self._capacity, now)
            while len(self._buckets) > self._max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        bucket.take(now)

    def reloaded(self, per_minute: int, max_tracked: int) -> AddressLimiter:
        """A limiter of a new budget in which each address keeps what it has left: a
        reload must not unblock a flood."""
        limiter = AddressLimiter(per_minute, max_tracked, self._clock)
        now = self._clock()
        for address, bucket in self._buckets.items():  # least recently seen first
            limiter._buckets[address] = bucket.resized(limiter._rate, limiter._capacity, now)
        while len(limiter._buckets) > max_tracked:
            limiter._buckets.popitem(last=False)
        return limiter


Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def networks(addresses: Iterable[str]) -> Networks:
    """``trusted_proxies`` (addresses or networks) parsed once, for `is_within`."""
    return [ipaddress.ip_network(item, strict=False) for item in addresses]


def is_within(address: str, within: Networks) -> bool:
    """Whether ``address`` is an IP address inside one of ``within``."""
    if not within:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in within)


def client_address(peer: str | None, forwarded_for: Sequence[str], proxies: Networks) -> str:
    """The address to hold responsible: the peer, unless the peer is one of the trusted
    ``proxies`` (see `networks`), then the nearest ``X-Forwarded-For`` hop that is not
    itself a trusted proxy.

    ``forwarded_for`` is every ``X-Forwarded-For`` line, in order: a proxy may add a line
    of its own rather than extend the client's, and the first line is then the client's
    own words, which could charge any address with its refusals.
    """
    address = peer or "unknown"
    if not proxies or not is_within(address, proxies) or not forwarded_for:
        return address
    hops = [part.strip() for line in forwarded_for for part in line.split(",")]
    for hop in reversed(hops):
        if hop and not is_within(hop, proxies):
            return hop
    return address
