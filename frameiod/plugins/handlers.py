"""What plugins hand to the host: handlers, the start-up context, and call outcomes.

Also the routing rules, kept in one place: which handlers an event reaches, given the
source it arrived on, its type, and the secret that verified it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from frameiod.events import EVENT_TYPES, WebhookEvent, closest_event_type

if TYPE_CHECKING:
    import structlog
    from pydantic import BaseModel

    from frameiod.config import Config

__all__ = [
    "DEFAULT_SOURCE",
    "ActionHandler",
    "Outcome",
    "PluginContext",
    "Routes",
    "WebhookHandler",
    "call_handler",
    "maybe_await",
    "pattern_problem",
    "secret_id",
]

DEFAULT_SOURCE = "default"

HandlerFunc = Callable[[WebhookEvent], Any]


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if it is awaitable: hooks and callbacks may be ``def`` or ``async def``."""
    return await value if inspect.isawaitable(value) else value


def call_handler(func: Callable[[Any], Any], event: Any) -> Awaitable[Any]:
    """Call a handler: ``async def`` ones on the loop, plain functions in a daemon thread,
    so they cannot block the loop and one that never returns cannot block exit."""
    if inspect.iscoroutinefunction(func):
        return func(event)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():  # it may have been cancelled by a timeout meanwhile
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def hand_back(result: Any, error: BaseException | None) -> None:
        # RuntimeError: the loop closed while the handler ran. The daemon stopped and left
        # this call behind; nobody awaits its outcome, and its delivery runs again later.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    def run() -> None:
        try:
            result = func(event)
        except BaseException as exc:  # handed to the awaiting task, which decides
            hand_back(None, exc)
        else:
            hand_back(result, None)

    name = getattr(event, "type", "event")
    threading.Thread(target=run, name=f"frameiod-handler-{name}", daemon=True).start()
    return future


def secret_id(secret: str) -> str:
    """A stable, non-reversible tag for a secret, so routing never carries the secret itself."""
    return hashlib.sha256(b"frameiod-secret:" + secret.encode("utf-8")).hexdigest()[:16]


def pattern_problem(pattern: str) -> str | None:
    """Why an event-type pattern can never match a Frame.io V4 event, or None if it can."""
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    if pattern.endswith(".*"):
        group = pattern[:-1]
        if any(name.startswith(group) for name in EVENT_TYPES):
            return None
        return f"no Frame.io event type starts with {group!r}"
    hint = closest_event_type(pattern)
    return f"{pattern!r} is not a Frame.io event type" + (
        f" (did you mean {hint!r}?)" if hint else ""
    )


def _matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


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

    @property
    def is_async(self) -> bool:
        """True for ``async def`` handlers; plain functions run in a worker thread."""
        return inspect.iscoroutinefunction(self.func)

    @cached_property
    def secret_ids(self) -> frozenset[str]:
        """Tags of this handler's own secrets (see `secret_id`)."""
        return frozenset(secret_id(secret) for secret in self.secrets)

    def wants(self, event_type: str) -> bool:
        """True if any of this handler's patterns matches ``event_type``."""
        return any(_matches(pattern, event_type) for pattern in self.event_types)

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


class Routes:
    """Which handlers get which delivery: the one place the routing rules live."""

    def __init__(
        self, handlers: Iterable[WebhookHandler], actions: Iterable[ActionHandler] = ()
    ) -> None:
        self.handlers = tuple(handlers)
        self.actions = {(action.source, action.action): action for action in actions}

    def _all(self) -> list[WebhookHandler | ActionHandler]:
        return [*self.handlers, *self.actions.values()]

    def sources(self) -> set[str]:
        """Every source some handler listens on."""
        return {handler.source for handler in self._all()}

    def handler_secrets(self, source: str) -> list[str]:
        """Secrets declared on handlers of ``source``, which that source must accept too."""
        secrets: list[str] = []
        for handler in self._all():
            if handler.source == source:
                secrets.extend(s for s in handler.secrets if s not in secrets)
        return secrets

    def action(self, source: str, action: str) -> ActionHandler | None:
        """The handler of custom action ``action`` on ``source``, if one is loaded."""
        return self.actions.get((source, action))

    def merged_secrets(self, configured: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Per source: configured secrets first, then handler-declared ones (deduplicated).

        A source that only handlers declare (with secrets) becomes a source too.
        """
        merged = {name: list(secrets) for name, secrets in configured.items()}
        for source in sorted(self.sources()):
            extra = self.handler_secrets(source)
            if extra:
                have = merged.setdefault(source, [])
                have.extend(s for s in extra if s not in have)
        return merged

    def for_delivery(self, source: str, event_type: str, verified_by: str) -> list[WebhookHandler]:
        """Handlers that get an event of ``event_type`` on ``source`` verified by the secret
        whose `secret_id` is ``verified_by``."""
        return [
            handler
            for handler in self.handlers
            if handler.source == source
            and handler.wants(event_type)
            and (not handler.secrets or verified_by in handler.secret_ids)
        ]
