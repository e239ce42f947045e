"""Secrets as a config file refers to them: a literal, ``env:NAME``, ``file:PATH`` or
``credential:NAME`` (systemd's ``$CREDENTIALS_DIRECTORY``), resolved while the file is
validated and never shown."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

__all__ = ["SECRET_FILE_LIMIT", "ResolveContext", "Secret", "SecretRef", "type_name"]


class Secret:
    """A resolved secret. Its ``repr`` and ``str`` show where it came from, never the value."""

    __slots__ = ("_value", "reference")

    def __init__(self, reference: str, value: str) -> None:
        self.reference = reference
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for signing and verifying only."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ResolveContext:
    """Where secret references and relative paths are looked up (injected for tests)."""

    base_dir: Path
    environ: Mapping[str, str]


# A secret is a few hundred bytes at most; anything larger is a wrong path (a log, a disk
# image, /dev/zero), refused before it is read into memory.
SECRET_FILE_LIMIT = 64 * 1024

_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Raises OSError when it cannot be opened, ValueError naming what is wrong when it is not
    a regular file or is larger. O_NONBLOCK makes opening a named pipe return at once
    instead of waiting for a writer; fstat on the open file then refuses it (and a device)
    before anything is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):  # said as reading one would say it
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise ValueError(f"is {kind}, not a regular file")
        # One byte over the limit tells a file that grew after fstat from one that fits.
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB; a secret file holds one secret")
    return data


def _read_secret_file(path: Path, ref: str) -> str:
    try:
        data = _read_small_file(path, SECRET_FILE_LIMIT)
        text = data.decode("utf-8")
    except OSError as exc:
        raise PydanticCustomError(
            "secret",
            "cannot read {ref} ({path}): {why}",
            {"ref": ref, "path": str(path.absolute()), "why": exc.strerror or exc},
        ) from None
    except UnicodeDecodeError:
        raise PydanticCustomError(
            "secret", "{ref} ({path}) is not UTF-8 text", {"ref": ref, "path": str(path)}
        ) from None
    except ValueError as exc:
        raise PydanticCustomError(
            "secret",
            "cannot read {ref} ({path}): it {why}",
            {"ref": ref, "path": str(path.absolute()), "why": str(exc)},
        ) from None
    # Files written by editors and `echo` end in a newline that is not part of the secret.
    return text.rstrip("\r\n")


def _resolve(reference: str, ctx: ResolveContext) -> Secret:
    kind, colon, name = reference.partition(":")
    ref = json.dumps(reference)
    if colon and kind in ("env", "file", "credential") and not name:
        # "env:" alone is a reference with its name forgotten, not a five-letter secret.
        raise PydanticCustomError("secret", "{ref} names no {kind}", {"ref": ref, "kind": kind})
    if kind == "env" and name:
        if name not in ctx.environ:
            raise PydanticCustomError(
                "secret",
                "environment variable {name} is not set (from {ref})",
                {"name": name, "ref": ref},
            )
        value = ctx.environ[name]
    elif kind == "file" and name:
        value = _read_secret_file(ctx.base_dir / name, ref)
    elif kind == "credential" and name:
        directory = ctx.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise PydanticCustomError(
                "secret",
                "{ref} needs $CREDENTIALS_DIRECTORY, which is not set "
                "(it is set by systemd's LoadCredential=)",
                {"ref": ref},
            )
        if "/" in name or name in (".", ".."):
            raise PydanticCustomError(
                "secret", "{ref}: a credential name cannot contain '/'", {"ref": ref}
            )
        value = _read_secret_file(Path(directory) / name, ref)
    else:
        if not reference:
            raise PydanticCustomError("secret", "the secret is empty")
        return Secret("<literal>", reference)
    if not value:
        raise PydanticCustomError("secret", "the secret from {ref} is empty", {"ref": ref})
    return Secret(reference, value)


def type_name(value: object) -> str:
    """What kind of TOML value this is, for errors that must not show the value itself."""
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _secret_validator(value: object, info: ValidationInfo) -> Secret:
    if not isinstance(value, str):
        # Never echo the value: a secret written as a TOML number is still a secret.
        raise PydanticCustomError(
            "secret",
            'expected a string: a secret, "env:NAME", "file:PATH" or "credential:NAME", got {got}',
            {"got": type_name(value)},
        )
    ctx = info.context
    if not isinstance(ctx, ResolveContext):
        ctx = ResolveContext(base_dir=Path.cwd(), environ=os.environ)
    return _resolve(value, ctx)


SecretRef = Annotated[Secret, BeforeValidator(_secret_validator)]
