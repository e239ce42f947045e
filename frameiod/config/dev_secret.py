"""The development secret shipped in ``config.toml``, and when it is refused: while the
daemon is, or would be, reachable beyond this machine."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from frameiod.config.models import Config

__all__ = ["DEV_SECRET", "dev_secret_problem"]

DEV_SECRET = "dev-secret-change-me"  # noqa: S105 - the public placeholder shipped in config.toml


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def dev_secret_problem(config: Config, listening: Iterable[str] = ()) -> str | None:
    """Why ``config`` is refused, if a source accepts the shipped development secret while
    the daemon is, or would be, reachable beyond this machine; None if it is acceptable.

    ``listening`` are the hosts of the sockets the running daemon has bound. A reload
    cannot move them (``server.host`` changes at restart), so a loopback ``server.host``
    in the file does not make a public socket private.
    """
    name = next(
        (
            name
            for name, source in config.sources.items()
            if any(secret.reveal() == DEV_SECRET for secret in source.secrets)
        ),
        None,
    )
    if name is None:
        return None
    host = config.server.host
    if not _is_loopback(host):
        where = f'server.host ("{host}") is not a loopback address'
    else:
        exposed = next((bound for bound in listening if not _is_loopback(bound)), None)
        if exposed is None:
            return None
        where = (
            f'the daemon listens on "{exposed}", not a loopback address '
            "(a new server.host takes effect only after a restart)"
        )
    return (
        f"sources.{name}.secrets: the development secret from the shipped config.toml "
        f"is refused while {where}; set the secret Frame.io gave you for this webhook"
    )
