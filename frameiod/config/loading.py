"""Finding the config file, and reading it into a validated `Config` with its secrets
resolved, or a `ConfigError` listing every problem."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from frameiod.config.dev_secret import dev_secret_problem
from frameiod.config.models import Config
from frameiod.config.problems import ConfigError, validation_problems
from frameiod.config.secret_refs import ResolveContext

__all__ = ["CONFIG_VARIABLE", "DEFAULT_CONFIG_PATHS", "find_config", "load_config"]

DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/frameiod/config.toml"))


CONFIG_VARIABLE = "FRAMEIOD_CONFIG"
"""The environment variable naming the config file when ``--config`` does not."""


def find_config(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to use: ``explicit`` if given, else the file `CONFIG_VARIABLE`
    names, else the first of `DEFAULT_CONFIG_PATHS` that exists.

    Raise `ConfigError` naming the variable when it names a file that does not exist: the
    path alone would not say where it came from.
    """
    if explicit is not None:
        return Path(explicit)
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_VARIABLE, "")
    if named:
        path = Path(named)
        if not path.exists():
            raise ConfigError([f"{CONFIG_VARIABLE}={named}: no such config file"])
        return path
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


def _state_dir(path: Path, environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "")
    # systemd joins several StateDirectory= entries with ':'; the first is ours.
    first = state.split(":", 1)[0]
    return Path(first) if first else path.resolve().parent


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
    context = ResolveContext(base_dir=base_dir, environ=environ)
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
