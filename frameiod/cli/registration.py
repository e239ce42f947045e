"""``frameiod webhooks`` and ``frameiod actions``: register them in Frame.io, keep their secrets.

Frame.io shows a webhook's or a custom action's signing secret once, in the answer to its
creation. These commands create it through the ``frameio`` SDK, write the secret straight
into a new 0600 file under the state folder, and print the ``[sources.NAME]`` table that
makes the daemon accept it: the secret never passes through a terminal or a clipboard.
Nothing is left half-done: when the secret cannot be saved, what was just created in
Frame.io is deleted again. This module holds their command line and runs a verb with an
SDK client; the verbs are in `frameiod.cli.webhooks` and `frameiod.cli.actions`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from frameiod.cli.actions import actions_create, actions_delete, actions_list, actions_update
from frameiod.cli.common import EXIT_CONFIG, load, load_plugins
from frameiod.cli.frameio_calls import Context, Failure
from frameiod.cli.new_secrets import SECRETS_FOLDER, SOURCE_NAME
from frameiod.cli.webhooks import (
    webhooks_create,
    webhooks_delete,
    webhooks_list,
    webhooks_rotate,
    webhooks_update,
)
from frameiod.config import Config

if TYPE_CHECKING:
    from frameiod.plugins.host import PluginHost

__all__ = ["add_registration_commands", "cmd_registration", "run_registration"]


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
        return EXIT_CONFIG

    async def run() -> int:
        # The SDK is imported by `webhooks` and `actions` only: other commands start without it.
        from frameiod.client import FrameioClient

        client = FrameioClient(config.frameio)
        try:
            return int(await args.run(Context(args, config, load_plugins, client.api)))
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.status


def cmd_registration(args: argparse.Namespace) -> int:
    """``frameiod webhooks|actions VERB`` with the config ``--config`` names; the exit status."""
    config = load(args)
    if config is None:
        return EXIT_CONFIG
    return run_registration(args, config, load_plugins)


def _source_option(text: str) -> str:
    try:
        return str(SOURCE_NAME.validate_python(text))
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
    create.set_defaults(run=webhooks_create)
    listing = verbs.add_parser("list", parents=options.listing, help="list a workspace's webhooks")
    listing.set_defaults(run=webhooks_list)
    one = [options.common, options.account]
    update = verbs.add_parser("update", parents=one, help="change a webhook")
    update.add_argument("webhook_id", metavar="WEBHOOK_ID")
    update.add_argument("--events", metavar="PATTERNS", help=_EVENTS_HELP)
    update.add_argument("--url")
    update.add_argument("--active", type=_boolean, metavar="true|false")
    update.add_argument("--name", metavar="TEXT")
    update.set_defaults(run=webhooks_update)
    delete = verbs.add_parser("delete", parents=one, help="delete a webhook")
    delete.add_argument("webhook_id", metavar="WEBHOOK_ID")
    delete.set_defaults(run=webhooks_delete)
    rotate = verbs.add_parser(
        "rotate",
        parents=options.creating,
        help="create a twin of a webhook with a new secret, to retire the old one",
    )
    rotate.add_argument("webhook_id", metavar="WEBHOOK_ID")
    rotate.set_defaults(run=webhooks_rotate)
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
    create.set_defaults(run=actions_create)
    listing = verbs.add_parser("list", parents=options.listing, help="list a workspace's actions")
    listing.set_defaults(run=actions_list)
    one = [options.common, options.account]
    update = verbs.add_parser("update", parents=one, help="change a custom action")
    update.add_argument("action_id", metavar="ACTION_ID")
    update.add_argument("--event", metavar="KEY")
    update.add_argument("--url")
    update.add_argument("--name", metavar="TEXT")
    update.add_argument("--description", metavar="TEXT")
    update.add_argument("--timeout", type=_seconds, metavar="N")
    update.add_argument("--active", type=_boolean, metavar="true|false")
    update.set_defaults(run=actions_update)
    delete = verbs.add_parser("delete", parents=one, help="delete a custom action")
    delete.add_argument("action_id", metavar="ACTION_ID")
    delete.set_defaults(run=actions_delete)
    return actions


def add_registration_commands(
    commands: Any, common: argparse.ArgumentParser
) -> list[argparse.ArgumentParser]:
    """Add ``frameiod webhooks ...`` and ``frameiod actions ...`` to the CLI's subcommands;
    `cmd_registration` carries them out. Returns the two group parsers."""
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
    # --config on the verbs here; `frameiod.cli.main` adds it to the groups too.
    options = _Options(common, account, workspace, output, secret)
    groups = [_add_webhooks(commands, options), _add_actions(commands, options)]
    for group in groups:
        group.set_defaults(func=cmd_registration)
    return groups
