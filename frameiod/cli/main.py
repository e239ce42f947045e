"""The ``frameiod`` command: run, check, send, plugins, queue, webhooks, actions, install,
uninstall, --version."""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from frameiod import __version__
from frameiod.cli.registration import add_registration_commands, run_registration
from frameiod.config import Config, ConfigError, find_config, format_duration, load_config
from frameiod.events import EVENT_TYPES, closest_event_type, example_action, example_payload
from frameiod.plugins.host import PluginHost
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from frameiod.store.sqlite_queue import add_queue_commands, run_queue
from frameiod.terminal import printable, say

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _report(error: ConfigError) -> None:
    for problem in error.problems:
        say(problem, file=sys.stderr)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(find_config(args.config))
    except ConfigError as exc:
        _report(exc)
        return None


def _plugins(config: Config) -> PluginHost | None:
    """Discover the plugins and validate their config; None (after printing why) on errors."""
    host = PluginHost()
    host.discover(config.plugins.disable)
    try:
        warnings = host.configure(config)
    except ConfigError as exc:
        _report(exc)
        return None
    for warning in warnings:
        say(f"warning: {warning}", file=sys.stderr)
    try:
        host.routes()  # two plugins answering one custom action
    except ConfigError as exc:
        _report(exc)
        return None
    return host


def _cmd_run(args: argparse.Namespace) -> int:
    from frameiod import idle
    from frameiod.logs import configure_logging
    from frameiod.service import serve

    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log.level, config.log.format, cache=True)
    plugins = _plugins(config)
    if plugins is None:
        return EXIT_CONFIG
    # The spool hands its writes over when this loop runs out of work (`frameiod.idle`).
    with asyncio.Runner(loop_factory=idle.new_event_loop) as runner:
        return runner.run(serve(config, plugins))


def _load_with_plugins(args: argparse.Namespace) -> tuple[Config, PluginHost] | None:
    config = _load(args)
    plugins = _plugins(config) if config is not None else None
    return (config, plugins) if config is not None and plugins is not None else None


def _cmd_check(args: argparse.Namespace) -> int:
    loaded = _load_with_plugins(args)
    if loaded is None:
        return EXIT_CONFIG
    config, plugins = loaded
    server = config.server
    say(f"{config.path}: ok")
    say(f"  listen  {server.host}:{server.port} (bodies up to {server.max_body_bytes} bytes)")
    for name, source in sorted(config.sources.items()):
        refs = ", ".join(secret.reference for secret in source.secrets)
        count = len(source.secrets)
        say(
            f"  source  {name}: POST /webhooks/{name}, {count} secret{'s' * (count != 1)} "
            f"({refs}), tolerance {format_duration(source.tolerance)}"
        )
    spool = config.spool
    if spool.backend == "redis":
        # The reference, not the URL: it may carry a password.
        say(f"  spool   redis ({spool.redis_url.reference}), keys {spool.stream_prefix}:*")
    else:
        where = config.resolve_path(spool.path)
        say(f"  spool   sqlite {where} (synchronous {spool.synchronous})")
    say(f"  log     {config.log.level}, {config.log.format}")
    for info in plugins.plugins.values():
        say(f"  plugin  {info.name}: {info.status}" + (f" ({info.reason})" if info.reason else ""))
    failed = [info.name for info in plugins.plugins.values() if info.status == "failed"]
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    loaded = _load_with_plugins(args)
    if loaded is None:
        return EXIT_CONFIG
    infos = list(loaded[1].plugins.values())
    if args.requirements:
        # Only distributions: in-process plugins have nothing to pin.
        for pin in sorted({f"{i.distribution}=={i.version}" for i in infos if i.distribution}):
            say(pin)
    elif args.json:
        print(json.dumps([info.describe() for info in infos], indent=2))
    elif not infos:
        print("no plugins installed (pip install a frameiod-* package, or frameiod install NAME)")
    else:
        for info in infos:
            origin = f"{info.distribution} {info.version}" if info.distribution else "in-process"
            say(f"{info.name}  [{info.status}]  {origin}")
            if info.reason:
                say(f"  {info.reason}")
            for handler in info.handlers:
                types = ", ".join(handler.event_types)
                say(f"  handler {handler.name}: {types} (source {handler.source})")
            for action in info.actions:
                say(f"  action  {action.action}: {action.name} (source {action.source})")
    return EXIT_OK


def _cmd_queue(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    return run_queue(args, config)


def _cmd_registration(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    return run_registration(args, config, _plugins)


# What `frameiod install` hands to pip: a requirement (a name, extras, version bounds), a
# path or a URL. Anything else, pip's own options above all, is refused: it runs as root.
_REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\[[A-Za-z0-9._-]+(?: *, *[A-Za-z0-9._-]+)*\])?"
    r"(?: *(?:===|==|!=|~=|<=|>=|<|>) *[A-Za-z0-9.*+!_-]+"
    r"(?: *, *(?:===|==|!=|~=|<=|>=|<|>) *[A-Za-z0-9.*+!_-]+)*)?"
)
_URL = re.compile(r"(?:https?|file|(?:git|hg|svn|bzr)\+[a-z]+)://[^\s]+")
_PIP_OPTIONS = "-e, -U and -r"


def _distribution(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_path_or_url(text: str) -> bool:
    if _URL.fullmatch(text):
        return True
    return text.isprintable() and not text.startswith("-") and ("/" in text or text[:1] == ".")


def _install_refusal(args: argparse.Namespace) -> str | None:
    """Why ``frameiod install`` must not run pip with these arguments, or None."""
    for name in args.names:
        if not (_REQUIREMENT.fullmatch(name) or _is_path_or_url(name)):
            return f"refused {name!r}: give package names, paths or URLs"
    for path in args.editable:
        if not _is_path_or_url(path):
            return f"refused -e {path!r}: -e takes a path or a URL"
    for path in args.requirement:
        if not _is_path_or_url(path) and not Path(path).is_file():
            return f"refused -r {path!r}: -r takes a requirements file"
    if not (args.names or args.editable or args.requirement):
        return "name what to install: package names, paths, URLs, -e PATH or -r FILE"
    return None


def _needed_by_frameiod() -> dict[str, list[str]]:
    """Every distribution frameiod needs, transitively, as the installed metadata declares
    it (extras included: uninstalling one breaks whoever chose it): name → the chain of
    requirements that leads from frameiod to it."""
    chains = {"frameiod": ["frameiod"]}
    todo = collections.deque(["frameiod"])  # breadth first: each chain is a shortest one
    while todo:
        name = todo.popleft()
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra that is not installed
        for requirement in requires:
            match = _REQUIREMENT.match(requirement)
            needed = _distribution(match["name"]) if match else None
            if needed is not None and needed not in chains:
                chains[needed] = [*chains[name], needed]
                todo.append(needed)
    return chains


def _uninstall_refusal(args: argparse.Namespace) -> str | None:
    """Why ``frameiod uninstall`` must not run pip with these names, or None."""
    needed = _needed_by_frameiod()
    for name in args.names:
        match = _REQUIREMENT.fullmatch(name)
        if match is None:
            return f"refused {name!r}: give the names of installed plugin packages"
        chain = needed.get(_distribution(match["name"]))
        if chain == ["frameiod"]:
            return "refused frameiod: frameiod uninstall removes plugins, not frameiod itself"
        if chain is not None:
            return (
                f"refused {name}: frameiod needs it ({' -> '.join(chain)}); "
                "frameiod uninstall removes plugins"
            )
    return None


def _cmd_pip(args: argparse.Namespace) -> int:
    refusal = _install_refusal(args) if args.command == "install" else _uninstall_refusal(args)
    if refusal is not None:
        print(f"frameiod {args.command}: {printable(refusal)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "install":
        options = [
            *(["--upgrade"] if args.upgrade else []),
            *(f"--requirement={path}" for path in args.requirement),
            *(f"--editable={path}" for path in args.editable),
        ]
    else:
        options = ["-y"]
    command = [sys.executable, "-m", "pip", args.command, *options, *args.names]
    print("$ " + printable(" ".join(command)), flush=True)
    if subprocess.run(command, check=False).returncode != 0:  # noqa: S603 - our own interpreter
        print(f"pip {args.command} failed; nothing else was changed", file=sys.stderr)
        return EXIT_FAILED
    # A fresh interpreter: this one cannot see what pip just installed (.pth files, caches).
    listing = [sys.executable, "-m", "frameiod", "plugins"]
    if args.config:
        listing += ["--config", args.config]
    subprocess.run(listing, check=False)  # noqa: S603 - our own interpreter
    print("Restart frameiod to apply: systemctl restart frameiod")
    return EXIT_OK


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
    send.set_defaults(func=_cmd_send)

    plugins = commands.add_parser("plugins", parents=[common], help="list discovered plugins")
    output = plugins.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument(
        "--requirements",
        action="store_true",
        help="print installed plugin distributions in requirements format",
    )
    plugins.set_defaults(func=_cmd_plugins)

    add_queue_commands(commands, common).set_defaults(func=_cmd_queue)
    for group in add_registration_commands(commands, common):
        group.set_defaults(func=_cmd_registration)

    install = commands.add_parser(
        "install", parents=[common], help="install plugins into frameiod's own environment"
    )
    install.add_argument(
        "names", nargs="*", metavar="NAME", help="a package name (with version bounds), path or URL"
    )
    install.add_argument(
        "-e", dest="editable", action="append", default=[], metavar="PATH", help="editable"
    )
    install.add_argument("-U", dest="upgrade", action="store_true", help="upgrade")
    install.add_argument(
        "-r", dest="requirement", action="append", default=[], metavar="FILE", help="from a file"
    )
    install.set_defaults(func=_cmd_pip)
    uninstall = commands.add_parser(
        "uninstall", parents=[common], help="remove plugins from frameiod's own environment"
    )
    uninstall.add_argument("names", nargs="+", metavar="NAME", help="a plugin's package name")
    uninstall.set_defaults(func=_cmd_pip)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``frameiod`` command; returns the exit status."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if getattr(args, "func", None) is _cmd_pip:
            # pip's other options (--index-url, --target, ...) are not passed through.
            refused = printable(" ".join(unknown))
            options = _PIP_OPTIONS if args.command == "install" else "no options"
            print(
                f"frameiod {args.command}: refused {refused}: it takes {options}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.func is not _cmd_run:
        from frameiod.logs import configure_logging

        # stdout is the command's output (JSON for --json); warnings such as a plugin that
        # failed to load, with its traceback, go to stderr.
        configure_logging("warning", "auto", stream=sys.stderr)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
