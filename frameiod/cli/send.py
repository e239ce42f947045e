"""``frameiod send``: post a realistic event (or a payload from a file), signed with a
source's secret, to a daemon, over HTTP or HTTPS."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frameiod import __version__
from frameiod.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load
from frameiod.config import Config
from frameiod.events import EVENT_TYPES, closest_event_type, example_action, example_payload
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

if TYPE_CHECKING:
    import ssl

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
    # A daemon serving HTTPS (`[server] tls_certificate`) answers nothing else.
    scheme = "http" if config.tls_files() is None else "https"
    return f"{scheme}://{host}:{config.server.port}/{kind}/{source}"


def _trust(args: argparse.Namespace, config: Config, url: str) -> ssl.SSLContext | bool:
    """What to verify an HTTPS daemon's certificate with: the system's CAs, plus the CA of
    ``--cacert`` or, without it, the config's own certificate (so ``send`` reaches the
    daemon of its config with no option). Raise OSError or ssl.SSLError for a file that
    cannot be used."""
    import ssl

    tls = config.tls_files()
    cacert = args.cacert or (tls[0] if tls is not None else None)
    if not url.startswith("https:") or cacert is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=cacert)
    # The config's certificate is a server's, not a CA's: trusted as itself (its name is
    # still checked).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _read_body(name: str, event_type: str | None) -> bytes:
    """The bytes of ``--body`` (standard input for "-"), with a warning on stderr when they
    are not JSON or their type is not ``event_type``: they are sent as they are all the
    same, since what the daemon answers is the point. Raise OSError when the file cannot
    be read."""
    body = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    where = "standard input" if name == "-" else name
    try:
        payload = json.loads(body)
    except ValueError as exc:
        print(f"warning: {where} is not JSON ({exc}); sending it as it is", file=sys.stderr)
        return body
    kind = payload.get("type") if isinstance(payload, dict) else None
    if event_type and kind != event_type:
        print(
            f"warning: the type in {where} is {kind!r}, not {event_type!r}; sending it as it is",
            file=sys.stderr,
        )
    return body


def _payloads(args: argparse.Namespace) -> tuple[str, list[bytes]] | str:
    """The route (webhooks or actions) and the bodies to send, or why not (a usage error)."""
    kind = "actions" if args.action else "webhooks"
    if args.body is not None:
        if args.data is not None:
            return "--body is the whole payload: give no --data with it"
        try:
            return kind, [_read_body(args.body, args.event_type)] * args.count
        except OSError as exc:
            return f"cannot read --body {args.body}: {exc.strerror or exc}"
    if args.action:
        try:
            data = json.loads(args.data) if args.data is not None else None
        except ValueError as exc:
            return f"--data is not JSON: {exc}"
        actions = [example_action(args.action, args.resource_id, data) for _ in range(args.count)]
        return kind, [json.dumps(payload).encode() for payload in actions]
    if not args.event_type:
        return "name an EVENT_TYPE to send, or --action ACTION, or --body FILE"
    if args.event_type not in EVENT_TYPES:
        hint = closest_event_type(args.event_type)
        print(
            f"warning: {args.event_type!r} is not a Frame.io V4 event type"
            + (f" (did you mean {hint!r}?)" if hint else ""),
            file=sys.stderr,
        )
    events = [example_payload(args.event_type, args.resource_id) for _ in range(args.count)]
    return kind, [json.dumps(payload).encode() for payload in events]


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
    payloads = _payloads(args)
    if isinstance(payloads, str):
        print(payloads, file=sys.stderr)
        return EXIT_CONFIG
    kind, bodies = payloads
    url = args.url or _default_url(config, kind, args.source)
    try:
        verify = _trust(args, config, url)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        where = args.cacert or config.server.tls_certificate
        print(f"cannot verify HTTPS with {where}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    secret = source.secrets[0].reveal()
    failures = 0
    with httpx.Client(timeout=10.0, verify=verify) as client:
        for body in bodies:
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
    send.add_argument(
        "--body",
        metavar="FILE",
        help="send this file's payload, signed, instead of a generated one ('-': standard "
        "input; EVENT_TYPE, if given, is checked against its type); to the actions route "
        "with --action",
    )
    send.add_argument(
        "--url",
        help="where to POST (default: the configured host and port, https:// when "
        "[server] tls_certificate is set)",
    )
    send.add_argument(
        "--cacert",
        metavar="FILE",
        help="trust the CA certificates in FILE for an https:// URL (default: the system's "
        "CAs and the config's own tls_certificate)",
    )
    send.add_argument("--resource-id", help="resource id to put in the payload (default: random)")
    send.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="how many events to send (default: 1)",
    )
    send.set_defaults(func=cmd_send)
