"""The spool's files on disk: who may read and write them, and why not when they cannot.

The spool holds raw bodies and signatures, so its file (and the ``-wal`` and ``-shm`` files
SQLite keeps beside it) are readable by their owner only. When this user cannot use them,
the message names what to fix: the spool itself is fine and must not be moved aside.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import stat
from pathlib import Path

from frameiod.logs import get_logger
from frameiod.store.base import SpoolError

__all__ = [
    "PRIVATE_MODE",
    "access_problem",
    "companions",
    "create_private",
    "is_permission_error",
    "make_folder",
    "not_permitted",
    "tighten",
    "user_name",
]

log = get_logger("frameiod.spool")

PRIVATE_MODE = 0o600
"""The spool holds raw bodies and signatures: its files are readable by the owner only."""


def user_name(uid: int | None = None) -> str:
    """User ``uid`` (default: the one this process runs as), by name when it has one."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner(path: Path) -> str:
    info = path.stat()
    return f"owner {user_name(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o}"


# Said with every permission problem: the usual advice for a broken SQLite file (move it
# aside) would abandon the pending events here.
_KEEP_IT = "Nothing is damaged; do not move the spool aside, it holds the pending events."


def companions(path: Path) -> list[Path]:
    """The spool file and the files SQLite keeps beside it in WAL mode."""
    return [path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")]


def access_problem(path: Path) -> str | None:
    """Why this user cannot read and write the spool, its WAL files and its directory, or
    None. The answer names what to fix: the spool itself is fine and must not be moved."""
    user = user_name()
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        return (
            f"{path}: the spool is on a read-only filesystem; frameiod must write it and "
            f"create {path.name}-wal and {path.name}-shm beside it. Remount it read-write "
            f"or point [spool] path at a writable place. {_KEEP_IT}"
        )
    for file in companions(path):
        if file.exists() and not os.access(file, os.R_OK | os.W_OK, effective_ids=True):
            return (
                f"{file}: the spool is read-only for user {user}, who runs frameiod "
                f"({_owner(file)}). Give {user} read and write access (e.g. chown {user} "
                f"{file}, or chmod u+rw as its owner) and start again. {_KEEP_IT}"
            )
    must_create = not all(file.exists() for file in companions(path))
    if must_create and not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        return (
            f"{path.parent}: the spool's directory is not writable by user {user}, who runs "
            f"frameiod ({_owner(path.parent)}); SQLite creates {path.name}-wal and "
            f"{path.name}-shm there. Give {user} write access to it (e.g. chown {user} "
            f"{path.parent}) and start again. {_KEEP_IT}"
        )
    return None


def make_folder(path: Path) -> None:
    """Create the spool's folder if it is missing; raise `SpoolError` naming what to fix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise SpoolError(
            f"{path.parent}: cannot create the spool's directory as user {user_name()}: "
            f"{exc.strerror}; create it and give {user_name()} write access to it"
        ) from None
    except OSError as exc:
        raise SpoolError(f"{path}: cannot open the spool: {exc}") from None


def is_permission_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorname", "")
    return code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))


def not_permitted(path: Path, detail: str) -> str:
    # What the checks above could not see (an ACL, a security module, a file swapped since).
    user = user_name()
    return (
        f"{path}: the spool cannot be written by user {user}, who runs frameiod ({detail}). "
        f"Check that {user} may read and write it, {path.name}-wal and {path.name}-shm, and "
        f"write to its directory. {_KEEP_IT}"
    )


def create_private(path: Path) -> bool:
    """Create the spool file readable by its owner only, whatever the umask (SQLite gives
    its -wal and -shm the same mode); True if it was created now."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


def tighten(path: Path) -> None:
    """Make an existing spool's files owner-only: they hold raw bodies and signatures."""
    for file in companions(path):
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                try:
                    file.chmod(mode & 0o700)
                except OSError as exc:
                    log.warning(
                        "spool file is readable by others and cannot be made owner-only",
                        file=str(file),
                        mode=f"{mode:04o}",
                        error=exc.strerror,
                    )
                    continue
                log.info(
                    "spool file made readable by its owner only",
                    file=str(file),
                    mode_was=f"{mode:04o}",
                    mode=f"{mode & 0o700:04o}",
                )
