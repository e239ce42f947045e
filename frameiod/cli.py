"""The ``frameiod`` command: ``run``, ``check``, ``send`` and ``--version``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from frameiod import __version__
from frameiod.config import Config, ConfigError, find_config, format_duration, load_config
from frameiod.events import EVENT_TYPES, closest_event_type
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["build_payload", "main"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

# Frame.io does not document resource.type for non-asset events; these are best guesses
# that keep the payloads `send` builds realistic for handlers keyed on the type.
_RESOURCE_TYPES = {"metadata": "file"}


def build_payload(event_type: str, resource_id: str | None = None) -> dict[str, Any]:
    """A webhook body shaped like Frame.io's V4 deliveries, with fresh ids."""
    group = event_type.split(".", 1)[0]
    return {
        "type": event_type,
        "account": {"id": str(uuid.uuid4())},
        "workspace": {"id": str(uuid.uuid4())},
        "project": {"id": str(uuid.uuid4())},
        "resource": {
            "id": resource_id or str(uuid.uuid4()),
            "type": _RESOURCE_TYPES.get(group, group),
        },
        "user": {"id": str(uuid.uuid4())},
    }


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(find_config(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from frameiod.logs import configure_logging
    from frameiod.server import serve

    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log.level, config.log.format)
    return asyncio.run(serve(config))


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    server = config.server
    print(f"{config.path}: ok")
    print(f"  listen  {server.host}:{server.port} (bodies up to {server.max_body_bytes} bytes)")
    for name, source in sorted(config.sources.items()):
        refs = ", ".join(secret.reference for secret in source.secrets)
        count = len(source.secrets)
        print(
            f"  source  {name}: POST /webhooks/{name}, {count} secret{'s' * (count != 1)} "
            f"({refs}), tolerance {format_duration(source.tolerance)}"
        )
    print(f"  log     {config.log.level}, {config.log.format}")
    return EXIT_OK


def _default_url(config: Config, source: str) -> str:
    host = config.server.host
    # A wildcard listen address is not one a client can connect to.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{config.server.port}/webhooks/{source}"


def _cmd_send(args: argparse.Namespace) -> int:
    import httpx

    config = _load(args)
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
    if args.event_type not in EVENT_TYPES:
        hint = closest_event_type(args.event_type)
        print(
            f"warning: {args.event_type!r} is not a Frame.io V4 event type"
            + (f" (did you mean {hint!r}?)" if hint else ""),
            file=sys.stderr,
        )
    url = args.url or _default_url(config, args.source)
    secret = source.secrets[0].reveal()
    failures = 0
    with httpx.Client(timeout=10.0) as client:
        for _ in range(args.count):
            body = json.dumps(build_payload(args.event_type, args.resource_id)).encode()
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


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: ./config.toml, then /etc/frameiod/config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="frameiod", description="Receive, verify and dispatch Frame.io webhooks."
    )
    parser.add_argument("--version", action="version", version=f"frameiod {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.set_defaults(func=_cmd_run)

    check = commands.add_parser(
        "check", parents=[common], help="validate the config and resolve its secrets"
    )
    check.set_defaults(func=_cmd_check)

    send = commands.add_parser(
        "send", parents=[common], help="send a signed test event to a running daemon"
    )
    send.add_argument("event_type", metavar="EVENT_TYPE", help="e.g. file.ready")
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
    send.set_defaults(func=_cmd_send)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``frameiod`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
