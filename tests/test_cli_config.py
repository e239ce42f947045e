"""Which config file a ``frameiod`` command reads: ``--config`` at any level of the
command line, else ``$FRAMEIOD_CONFIG``, else ./config.toml, else /etc/frameiod."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import run_cli, write_config

from frameiod.config import ConfigError, find_config

# Each placement of --config, as a user types it; "{}" is the config's path.
PLACEMENTS = {
    "before check": ["--config", "{}", "check"],
    "after check": ["check", "--config", "{}"],
    "between queue and stats": ["queue", "--config", "{}", "stats"],
    "after queue stats": ["queue", "stats", "--config", "{}"],
    "before queue": ["--config", "{}", "queue", "stats"],
}


@pytest.fixture(scope="module")
def placed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Every placement run once, all at the same time, from a folder with no config.toml:
    name → (the config's folder, CompletedProcess)."""
    elsewhere = tmp_path_factory.mktemp("cwd")
    runs = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, argv in PLACEMENTS.items():
            folder = tmp_path_factory.mktemp("config")
            path = str(write_config(folder))
            args = [arg.format(path) for arg in argv]
            runs[name] = (
                folder,
                pool.submit(run_cli, *args, cwd=elsewhere, env={"FRAMEIOD_CONFIG": ""}),
            )
    return {name: (folder, future.result()) for name, (folder, future) in runs.items()}


class TestConfigOption:
    @pytest.mark.parametrize("placement", PLACEMENTS)
    def test_config_is_read_wherever_the_option_is_placed(
        self, placed: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], placement: str
    ):
        folder, result = placed[placement]
        assert "invalid choice" not in result.stderr
        if "check" in PLACEMENTS[placement]:
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith(f"{folder / 'config.toml'}: ok\n")
        else:
            # The spool is looked for next to the config it read.
            assert result.stderr == (
                f"no spool at {folder / 'frameiod.db'} (frameiod creates it on its first run)\n"
            )

    def test_the_innermost_config_option_wins(self, tmp_path: Path):
        inner = write_config(tmp_path / "inner")
        result = run_cli("--config", str(tmp_path / "outer.toml"), "check", "--config", str(inner))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{inner}: ok\n")

    def test_help_says_where_the_config_is_looked_for_and_that_the_option_goes_anywhere(self):
        result = run_cli("queue", "stats", "--help", env={"COLUMNS": "200"})
        assert (
            "config file (default: $FRAMEIOD_CONFIG, then ./config.toml, then "
            "/etc/frameiod/config.toml); before or after the command"
        ) in result.stdout


class TestEnvironmentVariable:
    def test_frameiod_config_is_read_before_the_working_directorys_config(self, tmp_path: Path):
        write_config(tmp_path / "cwd", "not toml at all [")
        named = write_config(tmp_path / "named")
        result = run_cli("check", cwd=tmp_path / "cwd", env={"FRAMEIOD_CONFIG": str(named)})
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{named}: ok\n")

    def test_an_explicit_config_option_wins_over_the_variable(self, tmp_path: Path):
        explicit = write_config(tmp_path)
        result = run_cli(
            "check",
            "--config",
            str(explicit),
            env={"FRAMEIOD_CONFIG": str(tmp_path / "missing.toml")},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{explicit}: ok\n")

    def test_a_variable_naming_no_file_is_an_error_naming_the_variable(self, tmp_path: Path):
        missing = tmp_path / "missing.toml"
        result = run_cli("queue", "stats", env={"FRAMEIOD_CONFIG": str(missing)})
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == f"FRAMEIOD_CONFIG={missing}: no such config file\n"

    def test_find_config_reads_the_variable_it_is_given(self, tmp_path: Path):
        named = write_config(tmp_path)
        assert find_config(None, {"FRAMEIOD_CONFIG": str(named)}) == named
        assert find_config("given.toml", {"FRAMEIOD_CONFIG": str(named)}) == Path("given.toml")
        with pytest.raises(ConfigError, match="FRAMEIOD_CONFIG="):
            find_config(None, {"FRAMEIOD_CONFIG": str(tmp_path / "none.toml")})
