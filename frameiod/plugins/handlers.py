"""What plugins hand to the host: handlers, the start-up context, and call outcomes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from frameiod.events import WebhookEvent
from frameiod.patterns import matches
from frameiod.secret_ids import secret_id

if TYPE_CHECKING:
    import structlog
    from aiohttp import web
    from pydantic import BaseModel

    from frameiod.config import Config

__all__ = [
    "DEFAULT_SOURCE",
    "ActionHandler",
    "HandlerAborted",
    "HandlerTimeout",
    "Outcome",
    "PluginContext",
    "Reception",
    "WebhookHandler",
]

DEFAULT_SOURCE = "default"

HandlerFunc = Callable[[WebhookEvent], Any]


@dataclass(frozen=True)
class WebhookHandler:
    """One handler function and the events it wants.

    ``event_types`` holds exact names (``"file.ready"``), groups (``"file.*"``) or ``"*"``.
    Without ``secrets`` the handler serves every delivery of its ``source``; with them,
    only deliveries that verified with one of them.
    """

    func: HandlerFunc
    event_types: tuple[str, ...]
    name: str = ""
    source: str = DEFAULT_SOURCE
    secrets: tuple[str, ...] = field(default=(), repr=False)
    timeout: float | None = None
    max_attempts: int | None = None
    concurrency: int | None = None
    plugin: str = ""

    def __post_init__(self) -> None:
        if not self.event_types:
            raise ValueError("a webhook handler needs at least one event type")
        if not self.name:
            # __name__, not __qualname__: handlers built in a factory would otherwise be
            # labelled "make_app.<locals>.handle" in every log line and metric.
            object.__setattr__(self, "name", getattr(self.func, "__name__", repr(self.func)))

    @property
    def key(self) -> str:
        """``plugin:name``: how the spool and ``frameiod queue`` name this handler."""
        return f"{self.plugin}:{self.name}"

    @cached_property
    def secret_ids(self) -> frozenset[str]:
        """Tags of this handler's own secrets (see `secret_id`)."""
        return frozenset(secret_id(secret) for secret in self.secrets)

    def wants(self, event_type: str) -> bool:
        """True if any of this handler's patterns matches ``event_type``."""
        return any(matches(pattern, event_type) for pattern in self.event_types)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description, without secrets (for ``frameiod plugins``)."""
        return {
            "name": self.name,
            "event_types": list(self.event_types),
            "source": self.source,
            "secrets": len(self.secrets),
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class ActionHandler:
    """The handler of one custom action (its event key, e.g. ``"acme.transcode"``).

    It gets an `frameiod.events.ActionEvent` and returns a `frameiod.responses.Message`,
    a `frameiod.responses.Form`, or None. ``resource_types`` limits what the action runs on
    (``file``, ``folder``, ``version_stack``); empty means any.
    """

    func: Callable[[Any], Any]
    action: str
    name: str = ""
    description: str = ""
    resource_types: tuple[str, ...] = ()
    source: str = DEFAULT_SOURCE
    secrets: tuple[str, ...] = field(default=(), repr=False)
    plugin: str = ""

    def __post_init__(self) -> None:
        if not self.action:
            raise ValueError("an action handler needs the action's event key")
        if not self.name:
            object.__setattr__(self, "name", self.action)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description, without secrets (for ``frameiod plugins``)."""
        return {
            "action": self.action,
            "name": self.name,
            "description": self.description,
            "resource_types": list(self.resource_types),
            "source": self.source,
            "secrets": len(self.secrets),
        }


@dataclass(frozen=True)
class Outcome:
    """How one handler call ended: ``status`` is ``ok``, ``error`` or ``timeout``; ``dead``
    when it failed for the last time (no attempts left)."""

    status: Literal["ok", "error", "timeout", "dead"]
    seconds: float
    error: str | None = None


@dataclass
class PluginContext:
    """What ``frameiod_startup`` and ``frameiod_shutdown`` receive."""

    name: str
    """The plugin's name (its entry-point name)."""
    config: Config
    """The daemon's whole validated configuration."""
    plugin_config: BaseModel | None
    """This plugin's ``[plugins.<name>]`` table, validated by its model, or None."""
    log: structlog.typing.FilteringBoundLogger
    """A logger bound with ``plugin=<name>``."""
    client: Any | None = None
    """The shared Frame.io API client, or None when no ``[frameio] token`` is configured."""


class HandlerTimeout(TimeoutError):
    """A handler ran past its timeout: what wrappers of ``frameiod_call_handler`` see."""


class HandlerAborted(Exception):
    """A handler raised what is not an ``Exception``: ``SystemExit`` (a library's
    ``sys.exit()``), ``KeyboardInterrupt``, or a ``CancelledError`` of its own (a cancelled
    future it awaited) while nobody cancelled its call.

    Left as they were, the first two would end the daemon's event loop, and the delivery
    would run again at the next start and end it again; the third would look like a stop,
    and leave the delivery marked running with no outcome. As this exception, the call
    failed like any other, and is retried or buried as its policy says.
    """


@dataclass(slots=True)
class Reception:
    """One ``POST /webhooks/{source}`` or ``/actions/{source}``, as ``frameiod_receive``
    wrappers see it."""

    request: web.Request
    """The aiohttp request: its headers and path (its body is the route's to read)."""
    kind: Literal["webhook", "action"]
    source: str
    """The source's name, from the path (it may not be a configured one)."""
    trace_context: str | None = None
    """A W3C ``traceparent`` a wrapper sets before the route runs: stored with the event."""
    payload: Mapping[str, Any] | None = None
    """The verified body as plain data (``type``, ``resource``, ...) once the route has
    checked its shape; None if the request was refused first. No event model is built for
    it: a webhook's handlers get theirs at dispatch."""
    event_id: str | None = None
    """The id of the webhook's event in the spool once it is there (the original's for a
    duplicate)."""
    duplicate: bool = False
    """A webhook answered 200 as a duplicate of an event already in the spool."""
