"""``frameiod actions create|list|update|delete``: custom actions registered in Frame.io
through the SDK, each shown beside the loaded handler that answers it."""

from __future__ import annotations

import sys
from typing import Any

from frameiod.cli.common import EXIT_CONFIG
from frameiod.cli.frameio_calls import ACTION, Context, Failure, all_pages
from frameiod.cli.new_secrets import keep_secret, pick_source, secret_file_option, source_in_url
from frameiod.cli.registration_output import print_apply, print_json, print_retire, print_table
from frameiod.plugins.handlers import DEFAULT_SOURCE, ActionHandler

__all__ = ["actions_create", "actions_delete", "actions_list", "actions_update"]


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


def _action_source(action: Any) -> str:
    return source_in_url(action.url, ACTION) or DEFAULT_SOURCE


async def actions_create(ctx: Context) -> int:
    """Create a custom action, save its secret and print the table that accepts it."""
    from frameio import ActionCreateParamsData

    args = ctx.args
    source = pick_source(args.source, args.url, ACTION)
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
            EXIT_CONFIG,
        )
    destination = secret_file_option(args.secret_file)
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
    reference = await keep_secret(ctx, ACTION, action, destination)
    print_table(ctx, source, reference, f"custom action {action.id}")
    print_apply()
    return 0


async def actions_list(ctx: Context) -> int:
    """List a workspace's custom actions, each with the loaded handler that answers it."""
    args = ctx.args
    items = await all_pages(
        ctx,
        ACTION,
        lambda after: ctx.api.custom_actions.actions_index(
            args.account, args.workspace, after=after
        ),
    )
    if args.json:
        print_json(items)
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


async def actions_update(ctx: Context) -> int:
    """Change a custom action; warn when no loaded handler answers it."""
    from frameio import ActionUpdateParamsData

    args = ctx.args
    keys = ("name", "description", "event", "url", "timeout", "active")
    changes = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if not changes:
        raise Failure(
            "nothing to change: give --name, --description, --event, --url, --timeout or --active",
            EXIT_CONFIG,
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


async def actions_delete(ctx: Context) -> int:
    """Delete a custom action and say how to retire its secret."""
    args = ctx.args
    await ctx.call(
        ACTION, "delete", ctx.api.custom_actions.actions_delete(args.account, args.action_id)
    )
    print(f"deleted custom action {args.action_id}; it is gone from Frame.io's menus")
    print_retire(ctx, ACTION, args.action_id)
    return 0
