"""``frameiod webhooks create|list|update|delete|rotate``: webhooks registered in Frame.io
through the SDK, their secrets saved for the daemon. Frame.io has no rotation endpoint, so
``rotate`` creates a twin of the webhook and says how to retire the original."""

from __future__ import annotations

import json
from typing import Any

from frameiod.cli.common import EXIT_CONFIG
from frameiod.cli.event_patterns import compact_events, expand_events
from frameiod.cli.frameio_calls import WEBHOOK, Context, Failure, all_pages
from frameiod.cli.new_secrets import (
    keep_secret,
    pick_source,
    secret_file_option,
    secret_of,
    source_in_url,
)
from frameiod.cli.registration_output import print_apply, print_json, print_retire, print_table
from frameiod.events import EVENT_TYPES

__all__ = [
    "webhooks_create",
    "webhooks_delete",
    "webhooks_list",
    "webhooks_rotate",
    "webhooks_update",
]


def _handler_events(ctx: Context, source: str) -> tuple[list[str], str]:
    routes = ctx.routes_or_none()
    if routes is None:
        raise Failure(
            "cannot tell which events the plugins handle (see above): name them with --events",
            EXIT_CONFIG,
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
            EXIT_CONFIG,
        )
    return events, "what " + ", ".join(handler.key for handler in handlers) + " handle"


def _events_option(text: str) -> list[str]:
    try:
        return expand_events(text)
    except ValueError as exc:
        raise Failure(str(exc), EXIT_CONFIG) from None


async def webhooks_create(ctx: Context) -> int:
    """Create a webhook, save its secret and print the table that accepts it."""
    from frameio import WebhookCreateParamsData

    args = ctx.args
    source = pick_source(args.source, args.url, WEBHOOK)
    if args.events is not None:
        events, origin = _events_option(args.events), ""
    else:
        events, origin = _handler_events(ctx, source)
    destination = secret_file_option(args.secret_file)
    data = WebhookCreateParamsData(
        name=args.name or f"frameiod {source}", url=args.url, events=events
    )
    answer = await ctx.call(
        WEBHOOK, "create", ctx.api.webhooks.create(args.account, args.workspace, data=data)
    )
    webhook = answer.data
    print(f'created webhook {webhook.id} "{webhook.name}" → {webhook.url}')
    print(f"  events  {compact_events(events)}" + (f": {origin}" if origin else ""))
    reference = await keep_secret(ctx, WEBHOOK, webhook, destination)
    print_table(ctx, source, reference, f"webhook {webhook.id}")
    print_apply()
    return 0


async def webhooks_list(ctx: Context) -> int:
    """List a workspace's webhooks, with the source each delivers to."""
    args = ctx.args
    items = await all_pages(
        ctx,
        WEBHOOK,
        lambda after: ctx.api.webhooks.index(args.account, args.workspace, after=after),
    )
    if args.json:
        print_json(items)
        return 0
    if not items:
        print(f"no webhooks in workspace {args.workspace}")
        return 0
    print(f"{'ID':36}  {'ACTIVE':6}  {'SOURCE':12}  {'NAME':24}  URL  /  EVENTS")
    for webhook in items:
        active = {True: "yes", False: "no"}.get(webhook.active, "?")
        source = source_in_url(webhook.url, WEBHOOK) or "-"
        print(
            f"{webhook.id:36}  {active:6}  {source[:12]:12}  {webhook.name[:24]:24}  {webhook.url}"
        )
        print(f"{'':36}  {compact_events(list(webhook.events))}")
    return 0


async def webhooks_update(ctx: Context) -> int:
    """Change a webhook's events, URL, name or whether it is active."""
    from frameio import WebhookUpdateParamsData

    args = ctx.args
    changes: dict[str, Any] = {}
    if args.events is not None:
        changes["events"] = _events_option(args.events)
    for key in ("url", "active", "name"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if not changes:
        raise Failure("nothing to change: give --events, --url, --active or --name", EXIT_CONFIG)
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
    print(f"  events  {compact_events(list(webhook.events))}")
    return 0


async def webhooks_delete(ctx: Context) -> int:
    """Delete a webhook and say how to retire its secret."""
    args = ctx.args
    await ctx.call(WEBHOOK, "delete", ctx.api.webhooks.delete(args.account, args.webhook_id))
    print(f"deleted webhook {args.webhook_id}; Frame.io stops its deliveries now")
    print_retire(ctx, WEBHOOK, args.webhook_id)
    return 0


async def webhooks_rotate(ctx: Context) -> int:
    """Create a twin of a webhook with a new secret, and say how to retire the original."""
    from frameio import WebhookCreateParamsData

    args = ctx.args
    old = (
        await ctx.call(WEBHOOK, "show", ctx.api.webhooks.show(args.account, args.webhook_id))
    ).data
    if old.workspace_id and old.workspace_id != args.workspace:
        raise Failure(
            f"webhook {old.id} is in workspace {old.workspace_id}, not {args.workspace}: "
            "its replacement must be in the same workspace to get the same events",
            EXIT_CONFIG,
        )
    source = pick_source(args.source, old.url, WEBHOOK)
    destination = secret_file_option(args.secret_file)
    data = WebhookCreateParamsData(name=old.name, url=old.url, events=list(old.events))
    new = (
        await ctx.call(
            WEBHOOK, "create", ctx.api.webhooks.create(args.account, args.workspace, data=data)
        )
    ).data
    print(f'created webhook {new.id} "{new.name}" to replace {old.id} → {new.url}')
    print(f"  events  {compact_events(list(new.events))}")
    if old.active is False:
        print(f"  note    {old.id} is inactive; its replacement is active")
    reference = await keep_secret(ctx, WEBHOOK, new, destination)
    found = secret_of(ctx, WEBHOOK, old.id)
    old_reference = found[1] if found and found[0] == source else None
    notes = {old_reference: f"webhook {old.id}: remove once it is deleted"} if old_reference else {}
    print_table(ctx, source, reference, f"webhook {new.id}", notes)
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
