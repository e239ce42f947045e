"""The ``sd_notify`` protocol over ``$NOTIFY_SOCKET``, with the standard library only.

Every function is a no-op returning False outside systemd, and never raises: telling
systemd how we are is never worth crashing the daemon for. ``environ`` is injectable for
tests; by default the process environment is read at each call.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "ready", "reloading", "status", "stopping", "watchdog_period", "watchdog_ping"]

# A full notify queue (PID 1 busy) must not stall the event loop for long.
_SEND_TIMEOUT = 1.0


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (like ``"READY=1"``) to systemd as one datagram; True if it was sent."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")) or len(address) < 2:
        return False
    if address.startswith("@"):  # an abstract socket: no file, a leading NUL byte
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto("\n".join(fields).encode(), address)
    except OSError:
        return False
    return True


def _status(text: str) -> str:
    # A newline would end the field and start another one (``READY=1``, say).
    return "STATUS=" + " ".join(text.splitlines())


def ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Startup (or a reload) is complete: the port is bound and requests are served."""
    fields = ["READY=1", _status(status)] if status else ["READY=1"]
    return notify(*fields, environ=environ)


def reloading(*, environ: Mapping[str, str] | None = None) -> bool:
    """A reload begins; send `ready` when it is done. ``MONOTONIC_USEC`` is what
    ``Type=notify-reload`` (systemd 253+) requires; older versions ignore it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", environ=environ)


def stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun (sent when SIGTERM arrives, before draining)."""
    return notify("STOPPING=1", environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line state shown by ``systemctl status``."""
    return notify(_status(text), environ=environ)


def watchdog_ping(*, environ: Mapping[str, str] | None = None) -> bool:
    """Tell the watchdog the event loop is alive; call it every `watchdog_period` seconds."""
    return notify("WATCHDOG=1", environ=environ)


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to call `watchdog_ping`: half of ``$WATCHDOG_USEC``, in seconds, or None
    when no watchdog is set (or it is meant for another process, per ``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2_000_000
