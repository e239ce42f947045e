"""``config.toml``: pydantic models, durations, secret references, and error messages.

Every problem is reported as ``<file>: <key.path>: <what was expected>, got <value>``,
all problems at once, so an operator fixes a config in one pass. Secrets are resolved
while loading (``frameiod check`` proves they resolve) and never printed.

One module per job: `durations`, `secret_refs` (references and their resolution),
`models` (one model per table), `problems` (the error lines), `dev_secret` (when the
shipped placeholder is refused) and `loading` (finding and reading the file).
"""

from frameiod.config.dev_secret import DEV_SECRET, dev_secret_problem
from frameiod.config.durations import Duration, format_duration, parse_duration
from frameiod.config.loading import DEFAULT_CONFIG_PATHS, find_config, load_config
from frameiod.config.models import (
    ADMIN_TOKEN_MIN_CHARS,
    AdminConfig,
    Config,
    DispatchConfig,
    FrameioConfig,
    LogConfig,
    MetricsConfig,
    OAuthConfig,
    PluginsConfig,
    ServerConfig,
    SourceConfig,
    SourceName,
    SpoolConfig,
)
from frameiod.config.problems import ConfigError, validation_problems
from frameiod.config.secret_refs import Secret, SecretRef

__all__ = [
    "ADMIN_TOKEN_MIN_CHARS",
    "DEFAULT_CONFIG_PATHS",
    "DEV_SECRET",
    "AdminConfig",
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
    "SourceName",
    "SpoolConfig",
    "dev_secret_problem",
    "find_config",
    "format_duration",
    "load_config",
    "parse_duration",
    "validation_problems",
]
