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

from frameiod.config.durations import Duration
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


ADMIN_TOKEN_MIN_CHARS = 32
"""The shortest ``[admin] token`` accepted when the admin listener is beyond loopback."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class AdminConfig(_Table):
    """``[admin]``: the operator's listener (the queue's API and page), off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    token: SecretRef | None = None
    metrics: bool = False
    """True: ``/metrics`` is served on this listener instead of the webhook listener."""

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

    # Fewer let the dispatcher fall behind a full ingest load: each group commit of outcomes
    # holds at most one per worker (bench/, docs/performance.md).
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
