"""``frameiod install`` and ``frameiod uninstall``: pip, run on frameiod's own environment,
with only what is safe to hand it (it runs as root)."""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from frameiod.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from frameiod.terminal import printable

__all__ = ["add_install_commands", "cmd_pip", "refused_options"]

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


def _is_folder(text: str) -> bool:
    """Whether ``text`` (extras aside) names an existing folder: ``-e my-plugin``, as
    ``frameiod new-plugin my-plugin`` leaves it, is a path even without a slash."""
    folder = text.split("[", 1)[0]
    return text.isprintable() and not text.startswith("-") and Path(folder).is_dir()


def _install_refusal(args: argparse.Namespace) -> str | None:
    """Why ``frameiod install`` must not run pip with these arguments, or None."""
    for name in args.names:
        if not (_REQUIREMENT.fullmatch(name) or _is_path_or_url(name)):
            return f"refused {name!r}: give package names, paths or URLs"
    for path in args.editable:
        if not (_is_path_or_url(path) or _is_folder(path)):
            return f"refused -e {path!r}: -e takes a path or a URL"
    for path in args.requirement:
        if not _is_path_or_url(path) and not Path(path).is_file():
            return f"refused -r {path!r}: -r takes a requirements file"
    if not (args.names or args.editable or args.requirement):
        return "name what to install: package names, paths, URLs, -e PATH or -r FILE"
    return None


def _unpublished(names: list[str]) -> bool:
    """Whether one of the names given to ``frameiod install`` is a frameiod package asked
    for by name (which pip looks for on an index, where none is published yet)."""
    return any(
        (match := _REQUIREMENT.fullmatch(name)) is not None
        and _distribution(match["name"]).startswith("frameiod")
        and not Path(name).exists()
        for name in names
    )


def _not_installed(names: list[str]) -> list[str]:
    """The names given to ``frameiod uninstall`` that no installed distribution carries."""
    missing = []
    for name in names:
        match = _REQUIREMENT.fullmatch(name)
        try:
            importlib.metadata.distribution(match["name"] if match else name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _restart_hint() -> str:
    """How to make a running frameiod load what changed: through systemd when a frameiod
    unit is active there, otherwise in words (``make run``, a container, another manager)."""
    systemctl = shutil.which("systemctl")
    if systemctl is not None:
        try:
            active = subprocess.run(  # noqa: S603 - a fixed command line, no user input
                [systemctl, "is-active", "--quiet", "frameiod"],
                check=False,
                timeout=10,
                # Without systemd as init it explains so on stderr: not the user's business.
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass  # a systemctl that cannot answer says nothing about a unit
        else:
            if active.returncode == 0:
                return "Restart frameiod to apply: systemctl restart frameiod"
    return "Restart frameiod to apply."


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


def cmd_pip(args: argparse.Namespace) -> int:
    """Run pip install or uninstall with what was given, then list the plugins."""
    refusal = _install_refusal(args) if args.command == "install" else _uninstall_refusal(args)
    if refusal is not None:
        print(f"frameiod {args.command}: {printable(refusal)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "uninstall" and (missing := _not_installed(args.names)):
        listed = printable(", ".join(missing))
        verb = "is" if len(missing) == 1 else "are"
        print(
            f"frameiod uninstall: {listed} {verb} not installed; nothing was changed",
            file=sys.stderr,
        )
        return EXIT_FAILED
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
        if args.command == "install" and _unpublished(args.names):
            print(
                "frameiod and its plugins are not on PyPI yet: install from a folder "
                "(frameiod install ./plugins/frameiod-event-log) or from a wheel that "
                "make dist built (frameiod install dist/frameiod_event_log-*.whl)",
                file=sys.stderr,
            )
        return EXIT_FAILED
    # A fresh interpreter: this one cannot see what pip just installed (.pth files, caches).
    listing = [sys.executable, "-m", "frameiod", "plugins"]
    if args.config:
        listing += ["--config", args.config]
    subprocess.run(listing, check=False)  # noqa: S603 - our own interpreter
    print(_restart_hint())
    return EXIT_OK


def refused_options(args: argparse.Namespace, unknown: list[str]) -> str | None:
    """The line refusing options argparse did not know, for install and uninstall; None
    for the other commands (argparse's own error applies to them)."""
    if getattr(args, "func", None) is not cmd_pip:
        return None
    # pip's other options (--index-url, --target, ...) are not passed through.
    refused = printable(" ".join(unknown))
    options = _PIP_OPTIONS if args.command == "install" else "no options"
    return f"frameiod {args.command}: refused {refused}: it takes {options}"


def add_install_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``frameiod install`` and ``frameiod uninstall`` to the CLI's subcommands."""
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
    install.set_defaults(func=cmd_pip)
    uninstall = commands.add_parser(
        "uninstall", parents=[common], help="remove plugins from frameiod's own environment"
    )
    uninstall.add_argument("names", nargs="+", metavar="NAME", help="a plugin's package name")
    uninstall.set_defaults(func=cmd_pip)
