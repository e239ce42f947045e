"""``[admin]`` in config.toml: off by default, a token required when on, a long one beyond
loopback, never the webhook port; and ``frameiod run`` stopping with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli, write_config

from frameiod.config import ConfigError, load_config
from frameiod.testing import config_toml

LONG = "a" * 32


def _load(tmp_path: Path, admin: str, environ: dict[str, str] | None = None):
    path = write_config(tmp_path, config_toml(port=8080, extra=f"[admin]\n{admin}"))
    return load_config(path, environ=environ or {})


def test_off_by_default_and_its_token_is_not_resolved_while_off(tmp_path: Path):
    config = _load(tmp_path, 'token = "env:UNSET_ADMIN_TOKEN"')
    assert (config.admin.enabled, config.admin.token, config.admin.port) == (False, None, 8081)


@pytest.mark.parametrize(
    ("admin", "problem"),
    [
        ("enabled = true", "the admin listener needs a token"),
        ('enabled = true\nhost = "0.0.0.0"\ntoken = "short"', "at least 32 characters"),
        (f'enabled = true\nhost = "::"\ntoken = "{LONG[:-1]}"', "at least 32 characters"),
        (f'enabled = true\nport = 8080\ntoken = "{LONG}"', "never shares the webhook"),
        ('enabled = true\ntoken = "env:UNSET_ADMIN_TOKEN"', "UNSET_ADMIN_TOKEN is not set"),
    ],
)
def test_refused(tmp_path: Path, admin: str, problem: str):
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, admin)
    assert problem in str(refused.value.problems)


def test_a_short_token_on_loopback_and_a_long_one_anywhere(tmp_path: Path):
    assert _load(tmp_path, 'enabled = true\ntoken = "short"').admin.token is not None
    config = _load(tmp_path, 'enabled = true\nhost = "0.0.0.0"\ntoken = "env:T"', {"T": LONG})
    assert config.admin.token is not None
    assert LONG not in repr(config.admin), "a token is never shown"


def test_run_stops_with_the_reason(tmp_path: Path):
    write_config(
        tmp_path, config_toml(extra='[admin]\nenabled = true\nhost = "0.0.0.0"\ntoken = "short"')
    )
    result = run_cli("run", "--config", str(tmp_path / "config.toml"))
    assert result.returncode == 2
    assert 'admin: host "0.0.0.0" is not a loopback address' in result.stderr + result.stdout
