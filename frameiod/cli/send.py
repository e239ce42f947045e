"""``frameiod send``: post a realistic event, signed with a source's secret, to a daemon."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from typing import Any

from frameiod import __version__
from frameiod.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load
from frameiod.config import Config
from frameiod.events import EVENT_TYPES, closest_event_type, example_action, example_payload
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["add_send_command", "cmd_send"]


def _default_url(config: Config, kind: str, source: str) -> str:
    host = config.server.host
    # A wildcard listen address is not one a client can connect to.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{config.server.port}/{kind}/{source}"


def cmd_send(args: argparse.Namespace) -> int:
    """Post ``--count`` signed events (or custom-action requests) and print each answer."""
    # Only `send` talks HTTP: the other commands start without httpx.
    import httpx

    config = load(args)
    if config is None:
        return EXIT_CONFIG
    source = config.sources.get(args.source)
    if source is None:
        print(
            f"{config.path}: no [sources.{args.source}] table; configured: "
            f"{', '.join(sorted(config.sources))}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.action:
        try:
            data = json.loads(args.data) if args.data is not None else None
        except ValueError as exc:
            print(f"--data is not JSON: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        kind = "actions"
        payloads = [example_action(args.action, args.resource_id, data) for _ in range(args.count)]
    elif args.event_type:
        if args.event_type not in EVENT_TYPES:
            hint = closest_event_type(args.event_type)
            print(
                f"warning: {args.event_type!r} is not a Frame.io V4 event type"
                + (f" (did you mean {hint!r}?)" if hint else ""),
                file=sys.stderr,
            )
        kind = "webhooks"
        payloads = [example_payload(args.event_type, args.resource_id) for _ in range(args.count)]
    else:
        print("name an EVENT_TYPE to send, or --action ACTION", file=sys.stderr)
        return EXIT_CONFIG
    url = args.url or _default_url(config, kind, args.source)
    secret = source.secrets[0].reveal()
    failures = 0
    with httpx.Client(timeout=10.0) as client:
        for payload in payloads:
            body = json.dumps(payload).encode()
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"frameiod-send/{__version__}",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, body, timestamp),
            }
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                print(f"cannot reach {url}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(response.status_code, response.text, flush=True)
            failures += not response.is_success
    return EXIT_FAILED if failures else EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_send_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``frameiod send`` to the CLI's subcommands."""
    send = commands.add_parser(
        "send", parents=[common], help="send a signed test event to a running daemon"
    )
    send.add_argument("event_type", metavar="EVENT_TYPE", nargs="?", help="e.g. file.ready")
    send.add_argument(
        "--action", metavar="KEY", help="send a custom-action request for this event key instead"
    )
    send.add_argument(
        "--data", metavar="JSON", help="with --action: the submitted form values, as a JSON object"
    )
    send.add_argument("--source", default="default", help="source to sign for (default: default)")
    send.add_argument("--url", help="where to POST (default: the configured host and port)")
    send.add_argument("--resource-id", help="resource id to put in the payload (default: random)")
    send.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="how many events to send (default: 1)",
    )
    send.set_defaults(func=cmd_send)
