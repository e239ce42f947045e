"""The pydantic models of ``config.toml``, one per table, and `Config`, the whole file."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from frameiod.config.durations import AnswerDeadline, Duration
from frameiod.config.secret_refs import ResolveContext, Secret, SecretRef

__all__ = [
    "ADMIN_TOKEN_MIN_CHARS",
    "AdminConfig",
    "Config",
    "DispatchConfig",
    "FrameioConfig",
    "LogConfig",
    "MetricsConfig",
    "OAuthConfig",
    "PluginsConfig",
    "ServerConfig",
    "SourceConfig",
    "SourceName",
    "SpoolConfig",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
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

    host: str = Field(
        default="127.0.0.1",
        description=(
            "Address to listen on. frameiod refuses the development secret on any non-loopback "
            "address."
        ),
    )
    port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description='Port to listen on; 0 picks a free one (the "listening" log line says which).',
    )
    max_body_bytes: int = Field(
        default=65536,
        gt=0,
        description=(
            "Largest request body read; a larger one is answered 413 (Content-Length is checked "
            "before reading)."
        ),
    )
    read_timeout: Duration = Field(
        default=10.0,
        description=(
            "A request head is due this long after the connection opens (TLS included) or after "
            "the last answer, its body after its first byte; else 408."
        ),
    )
    # Below Frame.io's 5-s window: a webhook not committed by then is answered 503.
    ack_deadline: AnswerDeadline = Field(
        default=4.0,
        description=(
            "A verified webhook not committed to the spool this long after its body arrived is "
            "answered 503 spool_busy, inside Frame.io's 5-second window."
        ),
    )
    keepalive_timeout: Duration = Field(
        default=75.0, description="Idle kept-alive connections are closed after this."
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description=(
            "Connections served at once; one more closes the connection that has waited "
            "longest without a complete request head, or is itself closed when every one is "
            "serving a request."
        ),
    )
    max_connections_per_address: int = Field(
        default=64,
        ge=1,
        description=(
            "Connections served at once from one address (trusted_proxies exempt); more are closed "
            "at once."
        ),
    )
    unauthenticated_failures: int = Field(
        default=20,
        ge=1,
        description=(
            "Refused requests (401, 400, 413, ...) one address may make per minute before it is "
            "answered 429."
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Addresses or networks of proxies whose X-Forwarded-For is believed, e.g. "
            '["127.0.0.1"].'
        ),
    )
    max_tracked_addresses: int = Field(
        default=10000,
        ge=1,
        description=(
            "Per-address budgets remembered; the least recently seen address is forgotten first."
        ),
    )
    tls_certificate: str | None = Field(
        default=None,
        description=(
            "Certificate chain to serve HTTPS with (TLS 1.2 or newer): a path or credential:NAME; "
            "re-read on reload. Set with tls_key, or neither."
        ),
    )
    tls_key: str | None = Field(
        default=None, description="Private key of tls_certificate: a path or credential:NAME."
    )

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

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lines below this level are not written."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: console on a terminal, JSON lines otherwise; json; console.",
    )


class SourceConfig(_Table):
    """``[sources.<name>]``: one sender; the name is the URL segment of ``/webhooks/<name>``
    and ``/actions/<name>``."""

    secrets: list[SecretRef] = Field(
        min_length=1,
        description=(
            "Signing secrets, one or more (several during a rotation): each a literal, env:NAME, "
            "file:PATH or credential:NAME."
        ),
    )
    tolerance: Duration = Field(
        default=300.0,
        description=(
            "Accepted difference between a request's signed timestamp and this machine's clock, in "
            "both directions; also how long a request is remembered to answer its replay 200 "
            "duplicate."
        ),
    )
    rate: float = Field(
        default=1000.0,
        gt=0,
        description="Verified deliveries accepted per second; beyond it, 429 with Retry-After.",
    )
    burst: int = Field(
        default=2000, ge=1, description="Verified deliveries accepted at once above rate."
    )
    dispatch_rate: float = Field(
        default=0.0,
        ge=0,
        description="Handler calls per second for this source's events; 0: no limit.",
    )
    action_deadline: AnswerDeadline = Field(
        default=4.0,
        description=(
            "A custom action not answered by then gets action_late_message while its handler goes "
            "on (Frame.io waits 5 seconds)."
        ),
    )
    action_late_message: str = Field(
        default="This is taking longer than usual; it goes on in the background.",
        description="The description of the message answered when action_deadline passes.",
    )

    def secret_values(self) -> list[str]:
        """The secrets in configured order, for `frameiod.signature.verify`."""
        return [secret.reveal() for secret in self.secrets]


class OAuthConfig(_Table):
    """``[frameio.oauth]``: Adobe IMS server-to-server credentials (client credentials grant)."""

    client_id: str = Field(min_length=1, description="The Adobe IMS client id.")
    client_secret: SecretRef = Field(description="The Adobe IMS client secret: a secret reference.")
    ims_base_url: str = Field(
        default="https://ims-na1.adobelogin.com", description="Where Adobe IMS issues tokens."
    )
    scopes: str = Field(
        default="openid AdobeID frame.s2s.all",
        description="The scopes asked for, separated by spaces.",
    )


class FrameioConfig(_Table):
    """``[frameio]``: the API client handlers use (``app.client``)."""

    token: SecretRef | None = Field(
        default=None,
        description="An API token (a secret reference); or [frameio.oauth] instead, not both.",
    )
    oauth: OAuthConfig | None = Field(
        default=None, description="Adobe IMS server-to-server credentials, instead of token."
    )
    base_url: str = Field(default="https://api.frame.io", description="Where the Frame.io API is.")
    timeout: Duration = Field(default=30.0, description="Time allowed for each API request.")
    max_retries: int = Field(
        default=0,
        ge=0,
        description=(
            "The SDK's own retries of a failed request; frameiod retries whole handlers, so SDK "
            "retries could repeat a POST."
        ),
    )

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> FrameioConfig:
        if self.token is not None and self.oauth is not None:
            raise PydanticCustomError("choice", "set either token or [frameio.oauth], not both")
        return self

    @property
    def configured(self) -> bool:
        """True when there are credentials to build a client with."""
        return self.token is not None or self.oauth is not None


_OTHER_ROUTES = ("/webhooks/", "/actions/", "/api/", "/static/")
"""Where the webhook listener's and the admin listener's routes are (metrics may be on either)."""


class MetricsConfig(_Table):
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = Field(default=True, description="Serve Prometheus metrics.")
    path: str = Field(
        default="/metrics",
        pattern=r"^/[A-Za-z0-9/_.-]*$",
        description="The path metrics are served on.",
    )

    @field_validator("path")
    @classmethod
    def _a_path_of_its_own(cls, path: str) -> str:
        # On another route's path, metrics would hide it, be hidden by it, or stop start-up
        # with aiohttp's "route will never be executed".
        if path in ("/", "/healthz", "/readyz") or path.startswith(_OTHER_ROUTES):
            raise PydanticCustomError(
                "route_taken",
                "a path of its own: /, /healthz, /readyz and paths under "
                + ", ".join(_OTHER_ROUTES)
                + " are other routes of frameiod's",
            )
        return path


ADMIN_TOKEN_MIN_CHARS = 32
"""The shortest ``[admin] token`` accepted when the admin listener is beyond loopback."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class AdminConfig(_Table):
    """``[admin]``: the operator's listener (the queue's API and page), off by default."""

    enabled: bool = Field(
        default=False,
        description=(
            "Start the operator's listener (the queue's API and page); never on the webhook port. "
            "Takes effect at a restart."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description=(
            "Address it listens on; beyond loopback the token must be at least 32 characters."
        ),
    )
    port: int = Field(
        default=8081, ge=0, le=65535, description="Port it listens on; never server.port."
    )
    token: SecretRef | None = Field(
        default=None,
        description=(
            "The bearer token callers send: a secret reference, required when enabled; a reload "
            "applies a new one."
        ),
    )
    metrics: bool = Field(
        default=False,
        description="true: /metrics is served on this listener instead of the webhook listener.",
    )

    @model_validator(mode="before")
    @classmethod
    def _token_only_when_enabled(cls, data: Any) -> Any:
        # A disabled listener's token is not resolved: the shipped config names an
        # environment variable that is set only where the console is wanted.
        if isinstance(data, dict) and data.get("enabled") is not True and "token" in data:
            return {key: value for key, value in data.items() if key != "token"}
        return data

    @model_validator(mode="after")
    def _token_when_enabled(self) -> AdminConfig:
        if not self.enabled:
            return self
        if self.token is None:
            raise PydanticCustomError(
                "admin_token",
                'the admin listener needs a token: token = "env:FRAMEIOD_ADMIN_TOKEN" '
                "(any secret reference)",
            )
        if not _is_loopback(self.host) and len(self.token.reveal()) < ADMIN_TOKEN_MIN_CHARS:
            raise PydanticCustomError(
                "admin_token",
                "host {host} is not a loopback address: the token must be at least "
                "{chars} characters (e.g. from: openssl rand -hex 32)",
                {"host": json.dumps(self.host), "chars": ADMIN_TOKEN_MIN_CHARS},
            )
        return self


class SpoolConfig(_Table):
    """``[spool]``: where accepted events wait for their handlers."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description=(
            "sqlite: one file on one host; redis: several receivers sharing one queue on Redis "
            "Streams (needs frameiod[redis])."
        ),
    )
    path: str = Field(
        default="frameiod.db",
        description=(
            "The SQLite spool file; a relative path is under $STATE_DIRECTORY, else next to the "
            "config file."
        ),
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description=(
            "SQLite's synchronous mode: FULL, an acknowledged event survives power loss; NORMAL, a "
            "crash of the process only."
        ),
    )
    keep_done: Duration = Field(
        default=86400.0,
        description=(
            "Events whose deliveries are all done are deleted after this; dead letters are kept."
        ),
    )
    # For backend = "redis" (several receivers sharing one queue): a secret reference,
    # since the URL may carry a password.
    redis_url: SecretRef = Field(
        default_factory=lambda: Secret("<default>", "redis://127.0.0.1:6379/0"),
        description=(
            'With backend = "redis": the server, as a secret reference when the URL carries a '
            "password."
        ),
    )
    stream_prefix: str = Field(
        default="frameiod",
        description=(
            'With backend = "redis": the start of every key; receivers sharing a queue share it.'
        ),
    )

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

    # Fewer let the dispatcher fall behind a full ingest load: each group commit of outcomes
    # holds at most one per worker (bench/, docs/performance.md).
    workers: int = Field(default=32, ge=1, le=1024, description="Handler calls running at once.")
    handler_timeout: Duration = Field(
        default=30.0,
        description=(
            "Time allowed for one handler call, unless the handler sets timeout=; past it the call "
            "is an attempt that timed out."
        ),
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        description=(
            "Calls per delivery before it is dead (a dead letter), unless the handler sets "
            "max_attempts=."
        ),
    )
    backoff_initial: Duration = Field(
        default=5.0,
        description=(
            "The first retry waits up to this long (full jitter); each next one up to twice as "
            "long."
        ),
    )
    backoff_max: Duration = Field(
        default=3600.0, description="The longest wait between two attempts."
    )
    drain_timeout: Duration = Field(
        default=20.0,
        description=(
            "On SIGTERM, how long running handler calls may finish; the rest stay in the spool and "
            "run again at the next start."
        ),
    )


class PluginsConfig(_Table):
    """``[plugins]``: which discovered plugins not to load, and one table per plugin."""

    model_config = ConfigDict(extra="allow")
    # ``[plugins.<name>]`` tables land here; each plugin's own model validates its table.
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)

    disable: list[str] = Field(
        default_factory=list, description="Names of installed plugins not to load."
    )

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
    admin: AdminConfig = Field(default_factory=AdminConfig)
    frameio: FrameioConfig = Field(default_factory=FrameioConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    @model_validator(mode="after")
    def _admin_apart(self) -> Config:
        admin = self.admin
        if admin.enabled and admin.port and admin.port == self.server.port:
            raise PydanticCustomError(
                "admin_port",
                "admin.port is server.port ({port}): the admin listener never shares the "
                "webhook listener's port",
                {"port": admin.port},
            )
        return self

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
        context = ResolveContext(base_dir=self._base_dir, environ=self._environ)
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
