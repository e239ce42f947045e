"""``frameiod queue``: look into the spool and act on it, while the daemon runs or not.

Opens the configured spool for the operator (`frameiod.store.open.open_for_operator`) and
carries out `frameiod.store.operator`'s operations, the ones the admin API carries out
too; which backend it is does not matter here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from frameiod.cli.queue_show import print_list, print_show
from frameiod.config import Config, parse_duration
from frameiod.store import operator
from frameiod.store.base import STATES, DeliveryFilter, QueueError, SpoolBackend, SpoolError
from frameiod.store.open import open_for_operator
from frameiod.terminal import plural, say

__all__ = ["add_queue_commands", "run_queue"]


def _print_stats(data: dict[str, Any]) -> None:
    states = data["deliveries"]
    print(f"events      {data['events']}")
    print("deliveries  " + ", ".join(f"{state} {states[state]}" for state in STATES))
    age = data["oldest_pending_seconds"]
    print(f"oldest due pending  {'-' if age is None else f'{age:.1f}s'}")
    for handler, counts in data["handlers"].items():
        say(f"  {handler}: " + ", ".join(f"{s} {counts[s]}" for s in STATES if counts[s]))


def _printer(verb: str, noun: str) -> Callable[[dict[str, Any]], None]:
    """How a replay's or purge's answer is printed: ``verb`` and how many, on stdout."""

    def show(data: dict[str, Any]) -> None:
        print(f"{verb} {plural(data[verb], noun)}")

    return show


def _not_done(data: dict[str, Any]) -> bool:
    """Say on stderr each id a replay or purge did not act on, and why; whether any."""
    for refused in data.get("refused", ()):
        say(f"{refused['id']}: {refused['state']}: {refused['reason']}", file=sys.stderr)
    for unknown in data.get("unknown", ()):
        say(f"{unknown}: no such delivery or event", file=sys.stderr)
    return bool(data.get("refused") or data.get("unknown"))


def _filter(args: argparse.Namespace, state: str | None) -> DeliveryFilter:
    return operator.parse_filter(
        {
            "state": state,
            "source": args.source,
            "handler": args.handler,
            "event_type": args.event_type,
        }
    )


async def _act(args: argparse.Namespace, store: SpoolBackend) -> tuple[Any, Callable[[Any], None]]:
    """Carry out the action on ``store``: what it found or did, and how to print it."""
    command = args.queue_command
    if command == "stats":
        return await operator.stats(store), _print_stats
    if command == "list":
        wanted = _filter(args, args.state)
        page = await operator.list_page(store, wanted, args.limit, args.cursor)
        if page["cursor"] is not None and not args.json:
            say(f"more: --cursor {page['cursor']}", file=sys.stderr)
        return page["items"], print_list
    if command == "show":
        # An event id, or one delivery's id.
        found = await store.show(args.id) or await operator.delivery(store, args.id)
        return found, print_show
    if command == "replay":
        if args.all_dead:
            answer = await operator.replay(store, wanted=_filter(args, "dead"))
        else:
            answer = await operator.replay(store, ids=args.ids)
        return answer, _printer("replayed", "delivery")
    if args.ids:
        answer = await operator.purge(store, ids=args.ids)
    else:
        wanted = _filter(args, "dead")
        answer = await operator.purge(store, wanted=wanted, older_than=args.older_than or 0.0)
    return answer, _printer("purged", "dead delivery")


async def _run(args: argparse.Namespace, config: Config) -> int:
    try:
        store = await open_for_operator(config)
    except (QueueError, SpoolError) as exc:
        say(str(exc), file=sys.stderr)
        return 1
    try:
        data, printer = await _act(args, store)
    except QueueError as exc:
        say(str(exc), file=sys.stderr)
        return 1
    finally:
        await store.close()
    if args.queue_command == "show" and data is None:
        say(f"no event {args.id} in {store.describe()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        printer(data)
    # Ids named that were not replayed or purged: the operator asked for something
    # that did not happen.
    if args.queue_command in ("replay", "purge") and _not_done(data):
        return 1
    return 0


def run_queue(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``frameiod queue ACTION`` against the configured spool; the exit status."""
    if args.queue_command == "replay" and not args.ids and not args.all_dead:
        print("name event or delivery ids to replay, or --all-dead", file=sys.stderr)
        return 2
    if args.queue_command == "purge" and (
        bool(args.ids) == args.dead or (args.ids and args.older_than is not None)
    ):
        # Either ids or --dead: a filter and ids together would leave unsaid which wins.
        print("name event or delivery ids to purge, or --dead [--older-than]", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, config))


def _duration(text: str) -> float:
    # Days too, on the command line: dead letters are kept for days, not hours.
    if text.endswith("d") and text[:-1].isdigit():
        return int(text[:-1]) * 86400.0
    try:
        return parse_duration(text)
    except Exception:
        raise argparse.ArgumentTypeError(
            f'expected a duration like "12h" or "7d", got {text!r}'
        ) from None


def add_queue_commands(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``frameiod queue ...`` to the CLI's subcommands; `run_queue` carries them out."""
    # --config on the actions here; `frameiod.cli.main` adds it to the group too.
    queue = commands.add_parser("queue", help="inspect and act on the spool")
    verbs = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON")

    verbs.add_parser(
        "stats", parents=[common, output], help="counts per state and handler, oldest pending age"
    )
    narrow = argparse.ArgumentParser(add_help=False)
    narrow.add_argument("--handler", help="plugin:handler, as frameiod queue stats shows")
    narrow.add_argument("--source", help="deliveries of events from this source only")
    narrow.add_argument("--event-type", help="deliveries of events of this type only")
    listing = verbs.add_parser("list", parents=[common, output, narrow], help="list deliveries")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", help="where the page before ended (printed on stderr)")
    one = verbs.add_parser(
        "show", parents=[common, output], help="an event and its deliveries, or one delivery"
    )
    one.add_argument("id", metavar="ID", help="an event id or a delivery id")
    again = verbs.add_parser(
        "replay", parents=[common, output, narrow], help="make dead deliveries pending again"
    )
    again.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help='event ids or delivery ids (on Redis "<event id> <handler>", one quoted argument)',
    )
    again.add_argument(
        "--all-dead",
        action="store_true",
        help="every dead delivery (of --handler, --source, --event-type, if given)",
    )
    purge = verbs.add_parser(
        "purge", parents=[common, output, narrow], help="delete dead deliveries"
    )
    purge.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="event ids or delivery ids whose dead deliveries to delete",
    )
    purge.add_argument(
        "--dead",
        action="store_true",
        help="every dead letter (of --handler, --source, --event-type, if given); "
        "done deliveries are purged automatically",
    )
    purge.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="with --dead: only those last tried longer ago than this, e.g. 7d or 12h",
    )
    return queue
