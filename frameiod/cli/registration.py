"""``frameiod webhooks`` and ``frameiod actions``: register them in Frame.io, keep their secrets.

Frame.io shows a webhook's or a custom action's signing secret once, in the answer to its
creation. These commands create it through the ``frameio`` SDK, write the secret straight
into a new 0600 file under the state folder, and print the ``[sources.NAME]`` table that
makes the daemon accept it: the secret never passes through a terminal or a clipboard.
Nothing is left half-done: when the secret cannot be saved, what was just created in
Frame.io is deleted again. Frame.io has no rotation endpoint, so ``webhooks rotate``
creates a twin of the webhook and says how to retire the original.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import TypeAdapter

from frameiod.config import DEV_SECRET, Config, FrameioConfig, SourceName
from frameiod.events import EVENT_TYPES
from frameiod.plugins.handlers import DEFAULT_SOURCE, ActionHandler, pattern_problem

if TYPE_CHECKING:
    from frameio import AsyncFrameio

    from frameiod.plugins.handlers import Routes
    from frameiod.plugins.host import PluginHost

__all__ = [
    "Failure",
    "add_registration_commands",
    "api_problem",
    "expand_events",
    "run_registration",
    "save_secret",
]

_FAILED, _CONFIG = 1, 2  # the exit statuses of frameiod.cli.main

SECRETS_FOLDER = "secrets"  # under the state folder; "file:secrets/..." resolves there

_SOURCE_NAME = TypeAdapter(SourceName)


class Failure(Exception):
    """The command cannot go on: the message is one line for stderr, ``status`` the exit
    status (1 when Frame.io or the file system failed, 2 for what the user must change)."""

    def __init__(self, message: str, status: int = _FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Kind:
    name: str  # in messages: "webhook", "custom action"
    segment: str  # the CLI group and the daemon's URL segment: /webhooks/<source>
    file: str  # the secret file's prefix: webhook-<id>.secret

    @property
    def plural(self) -> str:
        return f"{self.name}s"


WEBHOOK = _Kind("webhook", "webhooks", "webhook")
ACTION = _Kind("custom action", "actions", "action")

# Per operation: the verb for messages, and Frame.io's rate limit (calls per minute per
# account user, from the SDK's docstrings; the same for webhooks and custom actions).
_OPERATIONS = {
    "create": ("creating", "creation", 10),
    "update": ("changing", "updates", 10),
    "list": ("listing", "listing", 100),
    "show": ("reading", "reading", 100),
    "delete": ("deleting", "deletion", 60),
}


# --- event types --------------------------------------------------------------------


def _wants(pattern: str, event_type: str) -> bool:
    return pattern in ("*", event_type) or (
        pattern.endswith(".*") and event_type.startswith(pattern[:-1])
    )


def expand_events(text: str) -> list[str]:
    """Expand comma-separated event types and patterns (``file.ready,comment.*``, ``*``)
    into catalogue names, in catalogue order; ValueError names a pattern matching none."""
    patterns = [pattern.strip() for pattern in text.split(",") if pattern.strip()]
    if not patterns:
        raise ValueError("--events names no event type")
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise ValueError(f"--events: {problem}")
    return [name for name in EVENT_TYPES if any(_wants(p, name) for p in patterns)]


def _compact(events: list[str]) -> str:
    """``file.ready, comment.* (6 events)``: whole groups of the catalogue as ``group.*``."""
    chosen = set(events)
    if chosen >= set(EVENT_TYPES):
        return f"* (all {len(chosen)} events)"
    parts: list[str] = []
    for name in [*EVENT_TYPES, *sorted(chosen - set(EVENT_TYPES))]:
        if name not in chosen:
            continue
        group = name.split(".", 1)[0] + ".*"
        members = [other for other in EVENT_TYPES if _wants(group, other)]
        if len(members) > 1 and chosen >= set(members):
            if group not in parts:
                parts.append(group)
        else:
            parts.append(name)
    count = len(chosen)
    return f"{', '.join(parts)} ({count} event{'s' * (count != 1)})"


# --- Frame.io's answers -------------------------------------------------------------


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


def _retry_after(headers: dict[str, str] | None) -> str:
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), "").strip()
    if value.isdigit():
        return f"retry in {int(value)} s"
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return "retry in a minute"
    return f"retry in {max(0, math.ceil(when.timestamp() - time.time()))} s"


def api_problem(
    exc: BaseException, kind: _Kind, operation: str, config: FrameioConfig
) -> str | None:
    """One line saying what went wrong with an SDK call and what to do; None for errors
    that are not about Frame.io (bugs, which should surface as tracebacks)."""
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
            f"{_retry_after(exc.headers)}"
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


# --- secrets on disk ----------------------------------------------------------------


def _owner_of(state: Path) -> tuple[int, int] | None:
    # Run as root (sudo, or the shell function of systemd/README.md), what we create in the
    # state folder would be root's, and the service's own user could not read it.
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    info = state.stat()
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


def save_secret(secret: str, path: Path, owner: tuple[int, int] | None = None) -> None:
    """Write ``secret`` to the new file ``path``, readable by its owner only (0600), and
    give it ``owner`` (uid, gid) if set.

    Never overwrites (``FileExistsError``); a file that cannot be written whole is removed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            if owner is not None:
                os.fchown(file.fileno(), *owner)
            file.write(secret + "\n")
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _safe(identifier: str) -> str:
    # Ids are UUIDs; anything else must still not reach outside the secrets folder.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", identifier).lstrip(".") or "_"


def _secret_file_option(text: str | None) -> Path | None:
    if text is None:
        return None
    path = Path(text).expanduser().absolute()
    if path.exists():
        raise Failure(
            f"--secret-file {path} already exists: frameiod never overwrites one", _CONFIG
        )
    if not path.parent.is_dir():
        raise Failure(f"--secret-file {path}: there is no folder {path.parent}", _CONFIG)
    return path


# --- the run of one command ---------------------------------------------------------


@dataclass
class _Context:
    args: argparse.Namespace
    config: Config
    load_plugins: Callable[[Config], PluginHost | None]
    api: AsyncFrameio

    async def call(self, kind: _Kind, operation: str, request: Awaitable[Any]) -> Any:
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


def _source_in_url(url: str, kind: _Kind) -> str | None:
    parts = urlsplit(url).path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == kind.segment and _valid_source(parts[-1]):
        return parts[-1]
    return None


def _valid_source(name: str) -> bool:
    try:
        _SOURCE_NAME.validate_python(name)
    except ValueError:
        return False
    return True


def _pick_source(given: str | None, url: str, kind: _Kind) -> str:
    """The source the secret belongs to: ``--source``, else the one the URL delivers to."""
    in_url = _source_in_url(url, kind)
    source = given or in_url or DEFAULT_SOURCE
    if in_url is None:
        print(
            f"warning: {url} does not end in /{kind.segment}/<source>, where frameiod "
            f"receives {kind.plural} (for source {source!r}: /{kind.segment}/{source})",
            file=sys.stderr,
        )
    elif in_url != source:
        print(
            f"warning: {url} delivers to source {in_url!r}, not to {source!r}",
            file=sys.stderr,
        )
    return source


async def _keep_secret(
    ctx: _Context, kind: _Kind, created: Any, destination: Path | None
) -> tuple[str, Path]:
    """Save the secret of what was just created; undo the creation if that fails.

    Returns the ``file:`` reference for the config and the file written.
    """
    base = ctx.config.base_dir
    secret = getattr(created, "secret", None)
    path = destination or base / SECRETS_FOLDER / f"{kind.file}-{_safe(created.id)}.secret"
    owner = None
    try:
        if not isinstance(secret, str) or not secret:
            raise ValueError("Frame.io's answer holds no secret")
        if destination is None:  # the state folder: the service must be able to read it
            owner = _owner_of(base)
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700)
                if owner is not None:
                    os.chown(path.parent, *owner)
        save_secret(secret, path, owner)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        undo = await _undo_create(ctx, kind, created.id)
        raise Failure(f"cannot save the secret to {path}: {why}; {undo}") from None
    if ctx.args.show_secret:
        print(f"  secret  {secret}")
    reference = f"file:{path.relative_to(base).as_posix()}" if destination is None else None
    return reference or f"file:{path}", path


async def _undo_create(ctx: _Context, kind: _Kind, identifier: str) -> str:
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


def _secret_lines(ctx: _Context, source: str, notes: dict[str, str]) -> list[str]:
    """Each configured secret of ``source`` as an array line (literals cannot be shown)."""
    configured = ctx.config.sources.get(source)
    lines = []
    for secret in configured.secrets if configured else []:
        if secret.reference == "<literal>":
            if secret.reveal() == DEV_SECRET:
                lines.append("    # (the development secret goes: Frame.io never signs with it)")
            else:
                lines.append("    # the secret written literally in the config now: keep it here")
            continue
        note = notes.get(secret.reference, "")
        lines.append(f"    {json.dumps(secret.reference)},{note and f'  # {note}'}")
    return lines


def _print_table(
    ctx: _Context, source: str, new: str, new_note: str = "", notes: dict[str, str] | None = None
) -> None:
    path = ctx.config.path
    if source in ctx.config.sources:
        print(f"\nIn {path}, set the secrets of [sources.{source}] (its other keys stay):\n")
    else:
        print(f"\nAdd this table to {path}:\n")
    print(f"[sources.{source}]")
    print("secrets = [")
    for line in _secret_lines(ctx, source, notes or {}):
        print(line)
    # The default file name already says whose secret it is.
    note = new_note if new_note.rpartition(" ")[2] not in new else ""
    print(f"    {json.dumps(new)},{note and f'  # {note}'}")
    print("]\n")


def _secret_of(ctx: _Context, kind: _Kind, identifier: str) -> tuple[str, str] | None:
    """The source and reference of a configured secret saved for ``identifier``."""
    name = f"{kind.file}-{_safe(identifier)}.secret"
    for source, table in sorted(ctx.config.sources.items()):
        for secret in table.secrets:
            kind_, _, where = secret.reference.partition(":")
            if kind_ == "file" and Path(where).name == name:
                return source, secret.reference
    return None


def _print_retire(ctx: _Context, kind: _Kind, identifier: str) -> None:
    """How to drop the secret of a deleted webhook or action from the config."""
    found = _secret_of(ctx, kind, identifier)
    if found is None:
        print(
            f"If its secret is in a [sources.NAME] table of {ctx.config.path}, remove it there, "
            "then: systemctl reload frameiod"
        )
        return
    source, reference = found
    file = ctx.config.resolve_path(reference.partition(":")[2])
    print(
        f"Remove {json.dumps(reference)} from the secrets of [sources.{source}] in "
        f"{ctx.config.path}, then: systemctl reload frameiod; then delete {file}"
    )


def _print_apply() -> None:
    print(
        "Then apply it: systemctl reload frameiod (without systemd: send the daemon SIGHUP, "
        "or restart it)."
    )


async def _all_pages(ctx: _Context, kind: _Kind, fetch: Callable[[str | None], Any]) -> list[Any]:
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


def _dump(items: list[Any]) -> None:
    print(json.dumps([item.model_dump(mode="json") for item in items], indent=2))


# --- frameiod webhooks ------------------------------------------------------------------


def _handler_events(ctx: _Context, source: str) -> tuple[list[str], str]:
    routes = ctx.routes_or_none()
    if routes is None:
        raise Failure(
            "cannot tell which events the plugins handle (see above): name them with --events",
            _CONFIG,
        )
    handlers = [
        handler
        for handler in routes.handlers
        if handler.source == source and any(handler.wants(name) for name in EVENT_TYPES)
    ]
    events = [name for name in EVENT_TYPES if any(h.wants(name) for h in handlers)]
    if not events:
        raise Failure(
            f"no loaded plugin handles events on source {source!r}: name the events with "
            "--events, e.g. --events file.ready,comment.*",
            _CONFIG,
        )
    return events, "what " + ", ".join(handler.key for handler in handlers) + " handle"


def _events_option(text: str) -> list[str]:
    try:
        return expand_events(text)
    except ValueError as exc:
        raise Failure(str(exc), _CONFIG) from None


async def _webhooks_create(ctx: _Context) -> int:
    from frameio import WebhookCreateParamsData

    args = ctx.args
    source = _pick_source(args.source, args.url, WEBHOOK)
    if args.events is not None:
        events, origin = _events_option(args.events), ""
    else:
        events, origin = _handler_events(ctx, source)
    destination = _secret_file_option(args.secret_file)
    data = WebhookCreateParamsData(
        name=args.name or f"frameiod {source}", url=args.url, events=events
    )
    answer = await ctx.call(
        WEBHOOK, "create", ctx.api.webhooks.create(args.account, args.workspace, data=data)
    )
    webhook = answer.data
    print(f'created webhook {webhook.id} "{webhook.name}" → {webhook.url}')
    print(f"  events  {_compact(events)}" + (f": {origin}" if origin else ""))
    reference, path = await _keep_secret(ctx, WEBHOOK, webhook, destination)
    print(f"  secret  saved to {path} (mode 0600; Frame.io shows it only once)")
    _print_table(ctx, source, reference, f"webhook {webhook.id}")
    _print_apply()
    return 0


async def _webhooks_list(ctx: _Context) -> int:
    args = ctx.args
    items = await _all_pages(
        ctx,
        WEBHOOK,
        lambda after: ctx.api.webhooks.index(args.account, args.workspace, after=after),
    )
    if args.json:
        _dump(items)
        return 0
    if not items:
        print(f"no webhooks in workspace {args.workspace}")
        return 0
    print(f"{'ID':36}  {'ACTIVE':6}  {'SOURCE':12}  {'NAME':24}  URL  /  EVENTS")
    for webhook in items:
        active = {True: "yes", False: "no"}.get(webhook.active, "?")
        source = _source_in_url(webhook.url, WEBHOOK) or "-"
        print(
            f"{webhook.id:36}  {active:6}  {source[:12]:12}  {webhook.name[:24]:24}  {webhook.url}"
        )
        print(f"{'':36}  {_compact(list(webhook.events))}")
    return 0


async def _webhooks_update(ctx: _Context) -> int:
    from frameio import WebhookUpdateParamsData

    args = ctx.args
    changes: dict[str, Any] = {}
    if args.events is not None:
        changes["events"] = _events_option(args.events)
    for key in ("url", "active", "name"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if not changes:
        raise Failure("nothing to change: give --events, --url, --active or --name", _CONFIG)
    answer = await ctx.call(
        WEBHOOK,
        "update",
        ctx.api.webhooks.update(
            args.account, args.webhook_id, data=WebhookUpdateParamsData(**changes)
        ),
    )
    webhook = answer.data
    active = {True: "active", False: "inactive"}.get(webhook.active, "active: unknown")
    print(f'updated webhook {webhook.id} "{webhook.name}" ({active}) → {webhook.url}')
    print(f"  events  {_compact(list(webhook.events))}")
    return 0


async def _webhooks_delete(ctx: _Context) -> int:
    args = ctx.args
    await ctx.call(WEBHOOK, "delete", ctx.api.webhooks.delete(args.account, args.webhook_id))
    print(f"deleted webhook {args.webhook_id}; Frame.io stops its deliveries now")
    _print_retire(ctx, WEBHOOK, args.webhook_id)
    return 0


async def _webhooks_rotate(ctx: _Context) -> int:
    from frameio import WebhookCreateParamsData

    args = ctx.args
    old = (
        await ctx.call(WEBHOOK, "show", ctx.api.webhooks.show(args.account, args.webhook_id))
    ).data
    if old.workspace_id and old.workspace_id != args.workspace:
        raise Failure(
            f"webhook {old.id} is in workspace {old.workspace_id}, not {args.workspace}: "
            "its replacement must be in the same workspace to get the same events",
            _CONFIG,
        )
    source = _pick_source(args.source, old.url, WEBHOOK)
    destination = _secret_file_option(args.secret_file)
    data = WebhookCreateParamsData(name=old.name, url=old.url, events=list(old.events))
    new = (
        await ctx.call(
            WEBHOOK, "create", ctx.api.webhooks.create(args.account, args.workspace, data=data)
        )
    ).data
    print(f'created webhook {new.id} "{new.name}" to replace {old.id} → {new.url}')
    print(f"  events  {_compact(list(new.events))}")
    if old.active is False:
        print(f"  note    {old.id} is inactive; its replacement is active")
    reference, path = await _keep_secret(ctx, WEBHOOK, new, destination)
    print(f"  secret  saved to {path} (mode 0600; Frame.io shows it only once)")
    found = _secret_of(ctx, WEBHOOK, old.id)
    old_reference = found[1] if found and found[0] == source else None
    notes = {old_reference: f"webhook {old.id}: remove once it is deleted"} if old_reference else {}
    _print_table(ctx, source, reference, f"webhook {new.id}", notes)
    print(
        "Until the old webhook is deleted, both deliver every event, each signed with its own "
        "secret (handlers are idempotent; keep the overlap short):"
    )
    print("  1. systemctl reload frameiod   (both secrets are accepted from then on)")
    print(f"  2. {ctx.command('webhooks', 'delete', '--account', args.account, old.id)}")
    if old_reference:
        file = ctx.config.resolve_path(old_reference.partition(":")[2])
        print(
            f"  3. remove {json.dumps(old_reference)} from [sources.{source}], "
            f"systemctl reload frameiod again, and delete {file}"
        )
    else:
        print(
            f"  3. remove webhook {old.id}'s old secret from [sources.{source}] secrets and "
            "systemctl reload frameiod again"
        )
    return 0


# --- frameiod actions -------------------------------------------------------------------


def _handler_line(handler: ActionHandler | None, event: str, source: str) -> None:
    if handler is None:
        print(
            f"warning: no loaded plugin handles custom action {event!r} on source {source!r}: "
            "its clicks get 404 until one does (frameiod plugins lists what is loaded)",
            file=sys.stderr,
        )
        return
    function = getattr(handler.func, "__name__", repr(handler.func))
    print(f"  handler {function}() in plugin {handler.plugin} (@app.on_action({event!r}))")


async def _actions_create(ctx: _Context) -> int:
    from frameio import ActionCreateParamsData

    args = ctx.args
    source = _pick_source(args.source, args.url, ACTION)
    routes = ctx.routes_or_none()
    handler = routes.action(source, args.event) if routes is not None else None
    # What the plugin declared fills in what the command line leaves out.
    name = args.name or (handler.name if handler and handler.name != handler.action else None)
    description = args.description or (handler.description if handler else None)
    if not name or not description:
        missing = " and ".join(
            option
            for option, value in (("--name", name), ("--description", description))
            if not value
        )
        raise Failure(
            f"give {missing}: no loaded handler of {args.event!r} declares "
            f"{'them' if ' and ' in missing else 'it'}",
            _CONFIG,
        )
    destination = _secret_file_option(args.secret_file)
    data = ActionCreateParamsData(
        name=name, description=description, event=args.event, url=args.url, timeout=args.timeout
    )
    answer = await ctx.call(
        ACTION,
        "create",
        ctx.api.custom_actions.actions_create(args.account, args.workspace, data=data),
    )
    action = answer.data
    print(
        f'created custom action {action.id} "{action.name}" (event {action.event}) → {action.url}'
    )
    _handler_line(handler, args.event, source)
    reference, path = await _keep_secret(ctx, ACTION, action, destination)
    print(f"  secret  saved to {path} (mode 0600; Frame.io shows it only once)")
    _print_table(ctx, source, reference, f"custom action {action.id}")
    _print_apply()
    return 0


def _action_source(action: Any) -> str:
    return _source_in_url(action.url, ACTION) or DEFAULT_SOURCE


async def _actions_list(ctx: _Context) -> int:
    args = ctx.args
    items = await _all_pages(
        ctx,
        ACTION,
        lambda after: ctx.api.custom_actions.actions_index(
            args.account, args.workspace, after=after
        ),
    )
    if args.json:
        _dump(items)
        return 0
    if not items:
        print(f"no custom actions in workspace {args.workspace}")
        return 0
    routes = ctx.routes_or_none()
    print(f"{'ID':36}  {'ACTIVE':6}  {'NAME':20}  {'EVENT':24}  {'HANDLER':24}  URL")
    for action in items:
        handler = routes.action(_action_source(action), action.event) if routes else None
        label = f"{handler.plugin}:{handler.func.__name__}" if handler else "none loaded"
        active = {True: "yes", False: "no"}.get(action.active, "?")
        print(
            f"{action.id:36}  {active:6}  {action.name[:20]:20}  {action.event[:24]:24}  "
            f"{label[:24]:24}  {action.url}"
        )
    return 0


async def _actions_update(ctx: _Context) -> int:
    from frameio import ActionUpdateParamsData

    args = ctx.args
    keys = ("name", "description", "event", "url", "timeout", "active")
    changes = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if not changes:
        raise Failure(
            "nothing to change: give --name, --description, --event, --url, --timeout or --active",
            _CONFIG,
        )
    answer = await ctx.call(
        ACTION,
        "update",
        ctx.api.custom_actions.actions_update(
            args.account, args.action_id, data=ActionUpdateParamsData(**changes)
        ),
    )
    action = answer.data
    active = "active" if action.active else "inactive"
    print(
        f'updated custom action {action.id} "{action.name}" ({active}, event {action.event}) '
        f"→ {action.url}"
    )
    routes = ctx.routes_or_none()
    source = _action_source(action)
    _handler_line(routes.action(source, action.event) if routes else None, action.event, source)
    return 0


async def _actions_delete(ctx: _Context) -> int:
    args = ctx.args
    await ctx.call(
        ACTION, "delete", ctx.api.custom_actions.actions_delete(args.account, args.action_id)
    )
    print(f"deleted custom action {args.action_id}; it is gone from Frame.io's menus")
    _print_retire(ctx, ACTION, args.action_id)
    return 0


# --- the command line -------------------------------------------------------------------


def run_registration(
    args: argparse.Namespace,
    config: Config,
    load_plugins: Callable[[Config], PluginHost | None],
) -> int:
    """Carry out ``frameiod webhooks|actions VERB``; the exit status.

    ``load_plugins`` discovers and configures the plugins (None after printing why it
    could not); it is called only by the verbs that look at handlers.
    """
    if not config.frameio.configured:
        print(
            f"{config.path}: no Frame.io credentials: set [frameio] token "
            f"(or [frameio.oauth]) to use frameiod {args.command}",
            file=sys.stderr,
        )
        return _CONFIG

    async def run() -> int:
        from frameiod.client import FrameioClient

        client = FrameioClient(config.frameio)
        try:
            return int(await args.run(_Context(args, config, load_plugins, client.api)))
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.status


def _source_option(text: str) -> str:
    try:
        return str(_SOURCE_NAME.validate_python(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "a source name is up to 64 letters, digits, '.', '_' or '-'"
        ) from None


def _boolean(text: str) -> bool:
    value = {"true": True, "yes": True, "false": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected whole seconds (1 or more), got {text!r}")
    return value


@dataclass(frozen=True)
class _Options:
    """Option groups the verbs share, as argparse parent parsers."""

    common: argparse.ArgumentParser  # --config
    account: argparse.ArgumentParser
    workspace: argparse.ArgumentParser
    output: argparse.ArgumentParser
    secret: argparse.ArgumentParser

    @property
    def creating(self) -> list[argparse.ArgumentParser]:
        return [self.common, self.account, self.workspace, self.secret]

    @property
    def listing(self) -> list[argparse.ArgumentParser]:
        return [self.common, self.account, self.workspace, self.output]


_EVENTS_HELP = "comma-separated event types or patterns, e.g. file.ready,comment.*"


def _add_webhooks(commands: Any, options: _Options) -> argparse.ArgumentParser:
    webhooks = commands.add_parser("webhooks", help="register webhooks in Frame.io")
    verbs = webhooks.add_subparsers(dest="verb", required=True, metavar="ACTION")
    create = verbs.add_parser(
        "create", parents=options.creating, help="create a webhook and save its secret"
    )
    create.add_argument("--url", required=True, help="where Frame.io delivers: .../webhooks/NAME")
    create.add_argument(
        "--events",
        metavar="PATTERNS",
        help=_EVENTS_HELP + " (default: what the loaded plugins handle on the source)",
    )
    create.add_argument("--name", metavar="TEXT", help="its name (default: frameiod SOURCE)")
    create.set_defaults(run=_webhooks_create)
    listing = verbs.add_parser("list", parents=options.listing, help="list a workspace's webhooks")
    listing.set_defaults(run=_webhooks_list)
    one = [options.common, options.account]
    update = verbs.add_parser("update", parents=one, help="change a webhook")
    update.add_argument("webhook_id", metavar="WEBHOOK_ID")
    update.add_argument("--events", metavar="PATTERNS", help=_EVENTS_HELP)
    update.add_argument("--url")
    update.add_argument("--active", type=_boolean, metavar="true|false")
    update.add_argument("--name", metavar="TEXT")
    update.set_defaults(run=_webhooks_update)
    delete = verbs.add_parser("delete", parents=one, help="delete a webhook")
    delete.add_argument("webhook_id", metavar="WEBHOOK_ID")
    delete.set_defaults(run=_webhooks_delete)
    rotate = verbs.add_parser(
        "rotate",
        parents=options.creating,
        help="create a twin of a webhook with a new secret, to retire the old one",
    )
    rotate.add_argument("webhook_id", metavar="WEBHOOK_ID")
    rotate.set_defaults(run=_webhooks_rotate)
    return webhooks


def _add_actions(commands: Any, options: _Options) -> argparse.ArgumentParser:
    actions = commands.add_parser("actions", help="register custom actions in Frame.io")
    verbs = actions.add_subparsers(dest="verb", required=True, metavar="ACTION")
    create = verbs.add_parser(
        "create", parents=options.creating, help="create a custom action and save its secret"
    )
    create.add_argument("--event", required=True, metavar="KEY", help="e.g. acme.transcode")
    create.add_argument("--url", required=True, help="where Frame.io posts: .../actions/NAME")
    create.add_argument("--name", metavar="TEXT", help="menu label (default: the handler's)")
    create.add_argument("--description", metavar="TEXT", help="(default: the handler's)")
    create.add_argument("--timeout", type=_seconds, metavar="N", help="seconds")
    create.set_defaults(run=_actions_create)
    listing = verbs.add_parser("list", parents=options.listing, help="list a workspace's actions")
    listing.set_defaults(run=_actions_list)
    one = [options.common, options.account]
    update = verbs.add_parser("update", parents=one, help="change a custom action")
    update.add_argument("action_id", metavar="ACTION_ID")
    update.add_argument("--event", metavar="KEY")
    update.add_argument("--url")
    update.add_argument("--name", metavar="TEXT")
    update.add_argument("--description", metavar="TEXT")
    update.add_argument("--timeout", type=_seconds, metavar="N")
    update.add_argument("--active", type=_boolean, metavar="true|false")
    update.set_defaults(run=_actions_update)
    delete = verbs.add_parser("delete", parents=one, help="delete a custom action")
    delete.add_argument("action_id", metavar="ACTION_ID")
    delete.set_defaults(run=_actions_delete)
    return actions


def add_registration_commands(
    commands: Any, common: argparse.ArgumentParser
) -> list[argparse.ArgumentParser]:
    """Add ``frameiod webhooks ...`` and ``frameiod actions ...`` to the CLI's subcommands;
    `run_registration` carries them out. Returns the two group parsers."""
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", required=True, metavar="ID", help="Frame.io account id")
    workspace = argparse.ArgumentParser(add_help=False)
    workspace.add_argument("--workspace", required=True, metavar="ID", help="Frame.io workspace id")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON")
    secret = argparse.ArgumentParser(add_help=False)
    secret.add_argument(
        "--source",
        type=_source_option,
        metavar="NAME",
        help="the [sources.NAME] to accept its secret (default: the one its URL delivers to, "
        "else default)",
    )
    secret.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"where to save the secret (default: {SECRETS_FOLDER}/ under the state folder)",
    )
    secret.add_argument(
        "--show-secret", action="store_true", help="also print the secret (it is saved anyway)"
    )
    # --config on the verbs only, as for `frameiod queue`.
    options = _Options(common, account, workspace, output, secret)
    return [_add_webhooks(commands, options), _add_actions(commands, options)]
