"""``frameiod webhooks`` and ``frameiod actions`` talking to Frame.io: one command's run
(its arguments, config and SDK client), SDK calls whose errors become one line saying
what to do, listings followed page by page, and undoing a creation."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from frameiod.cli.common import EXIT_FAILED
from frameiod.config import Config, FrameioConfig

if TYPE_CHECKING:
    from frameio import AsyncFrameio

    from frameiod.plugins.host import PluginHost
    from frameiod.plugins.routing import Routes

__all__ = [
    "ACTION",
    "WEBHOOK",
    "Context",
    "Failure",
    "Kind",
    "all_pages",
    "api_problem",
    "undo_create",
]


class Failure(Exception):
    """The command cannot go on: the message is one line for stderr, ``status`` the exit
    status (1 when Frame.io or the file system failed, 2 for what the user must change)."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Kind:
    """What a command registers in Frame.io, as its messages, URLs and files name it."""

    name: str  # in messages: "webhook", "custom action"
    segment: str  # the CLI group and the daemon's URL segment: /webhooks/<source>
    file: str  # the secret file's prefix: webhook-<id>.secret

    @property
    def plural(self) -> str:
        """The name in messages about several."""
        return f"{self.name}s"


WEBHOOK = Kind("webhook", "webhooks", "webhook")
ACTION = Kind("custom action", "actions", "action")

# Per operation: the verb for messages, and Frame.io's rate limit (calls per minute per
# account user, from the SDK's docstrings; the same for webhooks and custom actions).
_OPERATIONS = {
    "create": ("creating", "creation", 10),
    "update": ("changing", "updates", 10),
    "list": ("listing", "listing", 100),
    "show": ("reading", "reading", 100),
    "delete": ("deleting", "deletion", 60),
}


def _summary(body: Any) -> str:
    if hasattr(body, "model_dump"):
        body = body.model_dump(mode="json", exclude_none=True)
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        details = [
            str(error.get("detail") or error.get("title") or "")
            for error in body["errors"]
            if isinstance(error, dict)
        ]
        if any(details):
            return "; ".join(detail for detail in details if detail)[:300]
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return " ".join(text.split())[:300] or "(an empty answer)"


def _retry_after_text(headers: dict[str, str] | None) -> str:
    """When to try again, in words, from a 429's Retry-After header (seconds or a date)."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), "").strip()
    if value.isdigit():
        return f"retry in {int(value)} s"
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return "retry in a minute"
    return f"retry in {max(0, math.ceil(when.timestamp() - time.time()))} s"


def api_problem(
    exc: BaseException, kind: Kind, operation: str, config: FrameioConfig
) -> str | None:
    """One line saying what went wrong with an SDK call and what to do; None for errors
    that are not about Frame.io (bugs, which should surface as tracebacks)."""
    # The SDK is imported by `webhooks` and `actions` only: other commands start without it.
    import httpx
    from frameio import ForbiddenError, NotFoundError, TooManyRequestsError, UnauthorizedError
    from frameio.auth import FrameioAuthError
    from frameio.core import ParsingError
    from frameio.core.api_error import ApiError

    verb, noun, per_minute = _OPERATIONS[operation]
    what = f"the {kind.plural}" if operation == "list" else f"the {kind.name}"
    ids = "account/workspace id" if operation in ("create", "list") else f"account/{kind.file} id"
    if isinstance(exc, UnauthorizedError):
        credentials = "[frameio.oauth]" if config.oauth is not None else "[frameio] token"
        return f"the API token was refused (401): check {credentials}"
    if isinstance(exc, ForbiddenError):
        return f"not allowed (403): {verb} {kind.plural} needs an account admin"
    if isinstance(exc, NotFoundError):
        return f"not found (404): check the {ids}"
    if isinstance(exc, TooManyRequestsError):
        return (
            f"rate limited by Frame.io ({kind.name} {noun}: {per_minute} per minute); "
            f"{_retry_after_text(exc.headers)}"
        )
    if isinstance(exc, ApiError):
        return f"Frame.io answered {exc.status_code} when {verb} {what}: {_summary(exc.body)}"
    if isinstance(exc, ParsingError):
        return (
            f"Frame.io's answer ({exc.status_code}) when {verb} {what} is not what the SDK "
            f"expects: {_summary(exc.body)}"
        )
    if isinstance(exc, FrameioAuthError):
        return f"cannot get an access token from Adobe IMS: {exc}"
    if isinstance(exc, httpx.HTTPError):
        # A create that timed out may still have happened, its secret lost with the answer.
        maybe = (
            f" (it may have been created all the same: frameiod {kind.segment} list shows it)"
            if operation == "create" and isinstance(exc, httpx.TimeoutException)
            else ""
        )
        why = str(exc) or type(exc).__name__
        return f"cannot reach Frame.io at {config.base_url}: {why}{maybe}"
    return None


@dataclass
class Context:
    """One run of a ``webhooks`` or ``actions`` verb: its arguments, config and client."""

    args: argparse.Namespace
    config: Config
    load_plugins: Callable[[Config], PluginHost | None]
    api: AsyncFrameio

    async def call(self, kind: Kind, operation: str, request: Awaitable[Any]) -> Any:
        """Await an SDK call; Frame.io's and the network's errors become a `Failure`."""
        try:
            return await request
        except Exception as exc:
            problem = api_problem(exc, kind, operation, self.config.frameio)
            if problem is None:
                raise
            raise Failure(problem) from None

    def command(self, *words: str) -> str:
        """A frameiod command line to print, with this run's --config."""
        config = ["--config", self.args.config] if self.args.config else []
        return shlex.join(["frameiod", *words, *config])

    def routes_or_none(self) -> Routes | None:
        """The loaded plugins' handlers; None when they cannot be loaded (printed why)."""
        host = self.load_plugins(self.config)
        return host.routes() if host is not None else None


async def all_pages(ctx: Context, kind: Kind, fetch: Callable[[str | None], Any]) -> list[Any]:
    """Every item of a listing, following Frame.io's ``links.next`` cursors."""
    # Each page through index(after=...), not the SDK pager's get_next: that one skips the
    # status checks, so a later page that failed (a 429, say) would silently end the list.
    items: list[Any] = []
    after: str | None = None
    seen: set[str] = set()
    while True:
        pager = await ctx.call(kind, "list", fetch(after))
        items.extend(pager.items or [])
        following = getattr(getattr(pager.response, "links", None), "next", None)
        cursor = parse_qs(urlsplit(following).query).get("after", [""])[0] if following else ""
        if not cursor or cursor in seen:
            return items
        seen.add(cursor)
        after = cursor


async def undo_create(ctx: Context, kind: Kind, identifier: str) -> str:
    """Delete what was just created; a sentence saying it was, or what to run if not."""
    account = ctx.args.account
    try:
        if kind is WEBHOOK:
            await ctx.api.webhooks.delete(account, identifier)
        else:
            await ctx.api.custom_actions.actions_delete(account, identifier)
    except Exception as exc:
        problem = api_problem(exc, kind, "delete", ctx.config.frameio) or repr(exc)
        again = ctx.command(kind.segment, "delete", "--account", account, identifier)
        return f"deleting the new {kind.name} failed too ({problem}): run {again}"
    return f"the new {kind.name} {identifier} was deleted again, nothing was changed"
