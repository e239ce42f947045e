"""Where the secret of a new webhook or custom action goes: a new 0600 file (under the
state folder unless ``--secret-file`` says otherwise), and the source whose table is to
accept it. A secret that cannot be saved undoes the creation."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter

from frameiod.cli.common import EXIT_CONFIG
from frameiod.cli.frameio_calls import Context, Failure, Kind, undo_create
from frameiod.config import SourceName
from frameiod.plugins.handlers import DEFAULT_SOURCE

__all__ = [
    "SECRETS_FOLDER",
    "SOURCE_NAME",
    "keep_secret",
    "pick_source",
    "save_secret",
    "secret_file_option",
    "secret_of",
    "source_in_url",
]

SECRETS_FOLDER = "secrets"  # under the state folder; "file:secrets/..." resolves there

SOURCE_NAME = TypeAdapter(SourceName)


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


def secret_file_option(text: str | None) -> Path | None:
    """The absolute path ``--secret-file`` names (None without it); `Failure` if the file
    exists or its folder does not."""
    if text is None:
        return None
    path = Path(text).expanduser().absolute()
    if path.exists():
        raise Failure(
            f"--secret-file {path} already exists: frameiod never overwrites one", EXIT_CONFIG
        )
    if not path.parent.is_dir():
        raise Failure(f"--secret-file {path}: there is no folder {path.parent}", EXIT_CONFIG)
    return path


async def keep_secret(ctx: Context, kind: Kind, created: Any, destination: Path | None) -> str:
    """Save the secret of what was just created, and say where; undo the creation if saving
    fails. Returns the ``file:`` reference for the config."""
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
        undo = await undo_create(ctx, kind, created.id)
        raise Failure(f"cannot save the secret to {path}: {why}; {undo}") from None
    if ctx.args.show_secret:
        print(f"  secret  {secret}")
    print(f"  secret  saved to {path} (mode 0600; Frame.io shows it only once)")
    reference = f"file:{path.relative_to(base).as_posix()}" if destination is None else None
    return reference or f"file:{path}"


def secret_of(ctx: Context, kind: Kind, identifier: str) -> tuple[str, str] | None:
    """The source and reference of a configured secret saved for ``identifier``."""
    name = f"{kind.file}-{_safe(identifier)}.secret"
    for source, table in sorted(ctx.config.sources.items()):
        for secret in table.secrets:
            kind_, _, where = secret.reference.partition(":")
            if kind_ == "file" and Path(where).name == name:
                return source, secret.reference
    return None


def source_in_url(url: str, kind: Kind) -> str | None:
    """The source a daemon URL (``.../webhooks/<source>``) delivers to, or None."""
    parts = urlsplit(url).path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == kind.segment and _valid_source(parts[-1]):
        return parts[-1]
    return None


def _valid_source(name: str) -> bool:
    try:
        SOURCE_NAME.validate_python(name)
    except ValueError:
        return False
    return True


def pick_source(given: str | None, url: str, kind: Kind) -> str:
    """The source the secret belongs to: ``--source``, else the one the URL delivers to."""
    in_url = source_in_url(url, kind)
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
