"""``config.toml``: pydantic models, durations, secret references, and error messages.

Every problem is reported as ``<file>: <key.path>: <what was expected>, got <value>``,
all problems at once, so an operator fixes a config in one pass. Secrets are resolved
while loading (``frameiod check`` proves they resolve) and never printed.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DEV_SECRET",
    "Config",
    "ConfigError",
    "DispatchConfig",
    "Duration",
    "FrameioConfig",
    "LogConfig",
    "MetricsConfig",
    "OAuthConfig",
    "PluginsConfig",
    "Secret",
    "SecretRef",
    "ServerConfig",
    "SourceConfig",
    "SpoolConfig",
    "dev_secret_problem",
    "find_config",
    "format_duration",
    "load_config",
    "parse_duration",
    "validation_problems",
]

DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/frameiod/config.toml"))
DEV_SECRET = "dev-secret-change-me"  # noqa: S105 - the public placeholder shipped in config.toml

ModelT = TypeVar("ModelT", bound=BaseModel)

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: object) -> float:
    """Parse ``"250ms"``, ``"30s"``, ``"5m"`` or ``"1.5h"`` into seconds."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "duration",
            'expected a duration like "30s" or "5m" (units ms, s, m, h), got {got}',
            {"got": json.dumps(value)},
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def format_duration(seconds: float) -> str:
    """Render seconds the way a config file would say them (``300.0`` → ``"5m"``)."""
    for unit in ("h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise PydanticCustomError(
            "duration",
            "expected a duration greater than zero, got {got}",
            {"got": json.dumps(value)},
        )
    return seconds


Duration = Annotated[float, BeforeValidator(_positive_duration)]


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
class _ResolveContext:
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


def _resolve(reference: str, ctx: _ResolveContext) -> Secret:
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


def _type_name(value: object) -> str:
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
            {"got": _type_name(value)},
        )
    ctx = info.context
    if not isinstance(ctx, _ResolveContext):
        ctx = _ResolveContext(base_dir=Path.cwd(), environ=os.environ)
    return _resolve(value, ctx)


SecretRef = Annotated[Secret, BeforeValidator(_secret_validator)]
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _source_name(value: str) -> str:
    if not _SOURCE_NAME.fullmatch(value):
        raise PydanticCustomError(
            "source_name",
            "a source name is a URL segment: up to 64 letters, digits, '.', '_' or '-', got {got}",
            {"got": json.dumps(value)},
        )
    return value


SourceName = Annotated[str, AfterValidator(_source_name)]


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True
    )


class ServerConfig(_Table):
    """``[server]``: where to listen and how much to read."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=65536, gt=0)
    read_timeout: Duration = 10.0
    # Below Frame.io's 5-s window: a webhook not committed by then is answered 503.
    ack_deadline: Duration = 4.0
    keepalive_timeout: Duration = 75.0
    max_connections: int = Field(default=1024, ge=1)
    max_connections_per_address: int = Field(default=64, ge=1)
    unauthenticated_failures: int = Field(default=20, ge=1)
    trusted_proxies: list[str] = Field(default_factory=list)
    max_tracked_addresses: int = Field(default=10000, ge=1)
    tls_certificate: str | None = None
    tls_key: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise PydanticCustomError(
                "choice", "tls_certificate and tls_key go together: set both or neither"
            )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise PydanticCustomError(
                    "choice",
                    "expected IP addresses or networks, got {got}",
                    {"got": json.dumps(address)},
                ) from None
        return value


class LogConfig(_Table):
    """``[log]``: verbosity and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class SourceConfig(_Table):
    """``[sources.<name>]``: one sender; the name is the URL segment of ``/webhooks/<name>``
    and ``/actions/<name>``."""

    secrets: list[SecretRef] = Field(min_length=1)
    tolerance: Duration = 300.0
    rate: float = Field(default=1000.0, gt=0)
    burst: int = Field(default=2000, ge=1)
    dispatch_rate: float = Field(default=0.0, ge=0)
    action_deadline: Duration = 4.0
    action_late_message: str = "This is taking longer than usual; it goes on in the background."

    def secret_values(self) -> list[str]:
        """The secrets in configured order, for `frameiod.signature.verify`."""
        return [secret.reveal() for secret in self.secrets]


class OAuthConfig(_Table):
    """``[frameio.oauth]``: Adobe IMS server-to-server credentials (client credentials grant)."""

    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    ims_base_url: str = "https://ims-na1.adobelogin.com"
    scopes: str = "openid AdobeID frame.s2s.all"


class FrameioConfig(_Table):
    """``[frameio]``: the API client handlers use (``app.client``)."""

    token: SecretRef | None = None
    oauth: OAuthConfig | None = None
    base_url: str = "https://api.frame.io"
    timeout: Duration = 30.0
    max_retries: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> FrameioConfig:
        if self.token is not None and self.oauth is not None:
            raise PydanticCustomError("choice", "set either token or [frameio.oauth], not both")
        return self

    @property
    def configured(self) -> bool:
        """True when there are credentials to build a client with."""
        return self.token is not None or self.oauth is not None


class MetricsConfig(_Table):
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = True
    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9/_.-]*$")


class SpoolConfig(_Table):
    """``[spool]``: where accepted events wait for their handlers."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = "frameiod.db"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    keep_done: Duration = 86400.0
    # For backend = "redis" (several receivers sharing one queue): a secret reference,
    # since the URL may carry a password.
    redis_url: SecretRef = Field(
        default_factory=lambda: Secret("<default>", "redis://127.0.0.1:6379/0")
    )
    stream_prefix: str = "frameiod"

    @field_validator("backend")
    @classmethod
    def _redis_installed(cls, backend: str) -> str:
        # Said by `frameiod check`, not first at start-up: the package is an optional extra.
        if backend == "redis" and importlib.util.find_spec("redis") is None:
            raise PydanticCustomError(
                "missing_package",
                "\"redis\" needs the redis package: pip install 'frameiod[redis]'",
            )
        return backend

    @field_validator("stream_prefix")
    @classmethod
    def _key_prefix(cls, prefix: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
            raise PydanticCustomError(
                "key_prefix",
                "a Redis key prefix: up to 64 letters, digits, '_', '.', ':' or '-'",
            )
        return prefix


class DispatchConfig(_Table):
    """``[dispatch]``: how handlers are called, retried and given up on."""

    # 8 let the dispatcher fall behind a full ingest load: each group commit of outcomes
    # held at most 8, and calls started at a third of the acknowledged rate (bench/).
    workers: int = Field(default=32, ge=1, le=1024)
    handler_timeout: Duration = 30.0
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial: Duration = 5.0
    backoff_max: Duration = 3600.0
    drain_timeout: Duration = 20.0


class PluginsConfig(_Table):
    """``[plugins]``: which discovered plugins not to load, and one table per plugin."""

    model_config = ConfigDict(extra="allow")
    # ``[plugins.<name>]`` tables land here; each plugin's own model validates its table.
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)

    disable: list[str] = Field(default_factory=list)

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        """The ``[plugins.<name>]`` tables, by plugin name."""
        return dict(self.__pydantic_extra__ or {})


class Config(_Table):
    """The whole validated configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sources: dict[SourceName, SourceConfig] = Field(min_length=1)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    frameio: FrameioConfig = Field(default_factory=FrameioConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    # Set by load_config, not by the file: where it was read from, and the folder that
    # relative paths resolve against.
    _path: Path = PrivateAttr(default=Path("config.toml"))
    _base_dir: Path = PrivateAttr(default=Path())
    _environ: Mapping[str, str] = PrivateAttr(default_factory=lambda: os.environ)

    def tls_files(self) -> tuple[Path, Path] | None:
        """The certificate chain and key files to serve HTTPS with, or None for HTTP.

        Each is a path (relative ones resolve like every relative path) or
        ``credential:NAME`` (systemd's ``LoadCredential=``).
        """
        server = self.server
        if server.tls_certificate is None or server.tls_key is None:
            return None
        return self._file(server.tls_certificate), self._file(server.tls_key)

    def _file(self, reference: str) -> Path:
        kind, _, name = reference.partition(":")
        if kind == "credential" and name:
            return Path(self._environ.get("CREDENTIALS_DIRECTORY", "")) / name
        return self.resolve_path(reference)

    @property
    def path(self) -> Path:
        """The file this configuration was read from."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """``$STATE_DIRECTORY`` when set, else the config file's folder."""
        return self._base_dir

    def validate_table(self, model: type[ModelT], table: Mapping[str, Any]) -> ModelT:
        """Validate a plugin's table with the rules of this file: `SecretRef` fields resolve
        against the same environment and folder. Raises pydantic's ValidationError."""
        context = _ResolveContext(base_dir=self._base_dir, environ=self._environ)
        return model.model_validate(table, context=context)

    def source(self, name: str) -> SourceConfig:
        """``[sources.<name>]``, or the defaults for a source only handlers' secrets declare."""
        return self.sources.get(name) or _IMPLICIT_SOURCE

    def resolve_path(self, path: str | Path) -> Path:
        """Resolve a configured path: relative paths live under ``$STATE_DIRECTORY`` or the
        config file's folder."""
        return self.base_dir / path


# Settings of a source that handlers declare with their secrets but the file does not list.
_IMPLICIT_SOURCE = SourceConfig.model_construct(secrets=[])


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use: ``explicit`` if given, else the first of `DEFAULT_CONFIG_PATHS`."""
    if explicit is not None:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


def _state_dir(path: Path, environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "")
    # systemd joins several StateDirectory= entries with ':'; the first is ours.
    first = state.split(":", 1)[0]
    return Path(first) if first else path.resolve().parent


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else str(part)
    return text


def _known_keys(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Keys allowed in the table that holds ``loc``, for a did-you-mean hint."""
    node: Any = root
    for part in loc[:-1]:
        if get_origin(node) is dict:
            node = get_args(node)[1]  # ``part`` is a name the user chose, e.g. a source
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


_TOML_WORDS = {
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "list_type": "expected an array",
}


def _describe(root: type[BaseModel], error: Mapping[str, Any]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if root is Config and len(loc) == 2 and loc[0] == "plugins" and kind == "dict_type":
        # Any [plugins] key but `disable` must be a plugin's table: most likely a typo.
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(root, loc), n=1)
        return (
            "unknown key"
            + (f' (did you mean "{hint[0]}"?)' if hint else "")
            + f"; a plugin's settings go in a [plugins.{loc[1]}] table"
        )
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(root, loc), n=1)
        return "unknown key" + (f' (did you mean "{hint[0]}"?)' if hint else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and loc == ("sources",):
        return "at least one [sources.NAME] table is required"
    if kind == "too_short" and loc[-1:] == ("secrets",):
        return "at least one secret is required"
    if kind in ("duration", "secret", "source_name", "choice"):
        return error["msg"]
    # pydantic's words are Python's ("dictionary or instance of SourceConfig"); use TOML's.
    message = _TOML_WORDS.get(kind) or error["msg"][0].lower() + error["msg"][1:]
    value = error.get("input")
    if isinstance(value, str | int | float | bool):
        # `secrets = "hunter2"` instead of a list, or `[sources] a = "hunter2"`: say what
        # it is, never what it says.
        secret = loc[:1] == ("sources",) and (len(loc) < 3 or loc[2] == "secrets")
        message += f", got {_type_name(value) if secret else json.dumps(value)}"
    return message


def validation_problems(
    path: Path, model: type[BaseModel], error: ValidationError, prefix: tuple[str, ...] = ()
) -> list[str]:
    """One ``<file>: <key.path>: <message>`` line per error; ``prefix`` is where ``model``'s
    table sits in the file (e.g. ``("plugins", "event_log")`` for a plugin's own model)."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        key = _key_path(prefix + loc) or "(top level)"
        problems.append(f"{path}: {key}: {_describe(model, item)}")
    return problems


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def dev_secret_problem(config: Config, listening: Iterable[str] = ()) -> str | None:
    """Why ``config`` is refused, if a source accepts the shipped development secret while
    the daemon is, or would be, reachable beyond this machine; None if it is acceptable.

    ``listening`` are the hosts of the sockets the running daemon has bound. A reload
    cannot move them (``server.host`` changes at restart), so a loopback ``server.host``
    in the file does not make a public socket private.
    """
    name = next(
        (
            name
            for name, source in config.sources.items()
            if any(secret.reveal() == DEV_SECRET for secret in source.secrets)
        ),
        None,
    )
    if name is None:
        return None
    host = config.server.host
    if not _is_loopback(host):
        where = f'server.host ("{host}") is not a loopback address'
    else:
        exposed = next((bound for bound in listening if not _is_loopback(bound)), None)
        if exposed is None:
            return None
        where = (
            f'the daemon listens on "{exposed}", not a loopback address '
            "(a new server.host takes effect only after a restart)"
        )
    return (
        f"sources.{name}.secrets: the development secret from the shipped config.toml "
        f"is refused while {where}; set the secret Frame.io gave you for this webhook"
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file, or raise `ConfigError` listing every problem."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None

    base_dir = _state_dir(path, environ)
    context = _ResolveContext(base_dir=base_dir, environ=environ)
    try:
        config = Config.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(validation_problems(path, Config, exc)) from None
    problem = dev_secret_problem(config)
    if problem:
        raise ConfigError([f"{path}: {problem}"])
    config._path = path
    config._base_dir = base_dir
    config._environ = environ
    return config
