"""Opening the Redis spool's connection: for the daemon (a version check, and warnings about
persistence settings that could lose an acknowledged event) or for an operator's command."""

from __future__ import annotations

import os
import socket

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frameiod.logs import get_logger
from frameiod.store.base import QueueError, SpoolError
from frameiod.store.redis_keys import connect, safe_url

__all__ = ["node_name", "open_for_daemon", "open_for_operator", "operator_error", "text"]

log = get_logger("frameiod.redis")

OPERATOR_SOCKET_TIMEOUT = 30.0
"""How long an operator's command waits for Redis: its scripts walk the whole dead-letter
stream in one go, so longer than the daemon does before calling Redis unreachable."""


def text(value: bytes | str | None) -> str | None:
    """A Redis reply's bytes as text (None stays None)."""
    return value.decode() if isinstance(value, bytes) else value


def node_name() -> str:
    """This receiver's name in the consumer groups, unique per process: a restarted receiver
    must not inherit its predecessor's entries (they are taken over like any dead
    receiver's)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


async def open_for_daemon(url: str) -> aioredis.Redis:
    """A client for the daemon; raise `SpoolError` if Redis cannot be used. Warns when
    Redis's persistence settings could lose an acknowledged event."""
    try:
        client = connect(url)
    except ValueError as exc:  # not a redis://, rediss:// or unix:// URL, or a bad port
        raise SpoolError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
    try:
        info = await client.info("server")
    except RedisError as exc:
        await client.aclose()
        raise SpoolError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
    version = str(info.get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2]) < (6, 2):
        await client.aclose()
        raise SpoolError(
            f"Redis at {safe_url(url)} is version {version}; frameiod needs 6.2 or newer "
            "(XAUTOCLAIM)"
        )
    await _warn_about_persistence(client, safe_url(url))
    return client


async def open_for_operator(url: str) -> aioredis.Redis:
    """A client for an operator's command, Redis known to answer; raise `QueueError` if it
    cannot be reached."""
    try:
        client = connect(url, socket_timeout=OPERATOR_SOCKET_TIMEOUT, name="frameiod-queue")
    except ValueError as exc:  # not a redis://, rediss:// or unix:// URL
        raise QueueError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
    # Fail here, not halfway through an action, if Redis cannot be reached at all.
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise operator_error(url, exc) from None
    return client


def operator_error(url: str, exc: BaseException) -> QueueError:
    """What the operator reads when Redis failed: one line, naming the system's reason when
    Redis's text leaves it out (an asyncio connection says "Connect call failed", not
    "Connection refused"), never the password."""
    detail = str(exc)
    cause = exc.__cause__ or exc.__context__
    errno = getattr(cause, "errno", None)
    if isinstance(cause, OSError) and errno and os.strerror(errno) not in detail:
        detail = f"{os.strerror(errno)}: {detail}"
    return QueueError(f"cannot use Redis at {safe_url(url)}: {detail}")


async def _warn_about_persistence(client: aioredis.Redis, where: str) -> None:
    try:
        # One pattern, not two names: Redis 6.2's CONFIG GET takes a single argument.
        settings = await client.config_get("append*")
    except RedisError as exc:  # CONFIG is often renamed away on managed Redis
        log.warning(
            "cannot read Redis's persistence settings; make sure appendonly is on",
            redis=where,
            error=str(exc),
        )
        return
    appendonly = text(settings.get(b"appendonly", settings.get("appendonly")))
    fsync = text(settings.get(b"appendfsync", settings.get("appendfsync")))
    try:
        policy = await client.config_get("maxmemory-policy")
    except RedisError:
        policy = {}
    eviction = text(policy.get(b"maxmemory-policy", policy.get("maxmemory-policy")))
    if eviction not in (None, "noeviction"):
        log.warning(
            "Redis may evict keys when full: acknowledged events could vanish; set "
            "maxmemory-policy noeviction (a full Redis then refuses writes, and frameiod "
            "answers 503)",
            redis=where,
            maxmemory_policy=eviction,
        )
    if appendonly != "yes":
        log.warning(
            "Redis keeps no append-only file: a Redis restart loses events acknowledged "
            "since its last snapshot; set appendonly yes",
            redis=where,
        )
    elif fsync != "always":
        log.warning(
            "Redis fsyncs its append-only file only every second: a power loss or "
            "kernel crash can lose the last second of acknowledged events; set "
            "appendfsync always for the same promise as the SQLite spool",
            redis=where,
            appendfsync=fsync,
        )
