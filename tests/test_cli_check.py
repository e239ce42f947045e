"""``frameiod check`` and ``frameiod plugins`` when something is wrong: how it ends, and a
plugin's traceback as a person at a terminal reads it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from support import FRAMEIOD, install_plugin, run_cli, write_config

BROKEN = "import frameiod_no_such_module_anywhere\n"
MISSING = "ModuleNotFoundError: No module named 'frameiod_no_such_module_anywhere'"


@pytest.fixture
def broken(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config, and the environment of a process where plugin ``broken`` cannot import."""
    env = install_plugin(tmp_path / "site", "broken", BROKEN)
    return write_config(tmp_path), {**env, "FRAMEIOD_PLUGINS": "broken"}


def _stderr_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``frameiod ARGS`` with stderr on a pseudo-terminal and stdout on a pipe: the
    exit status, stdout and what the terminal received."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*FRAMEIOD, *args], stdout=subprocess.PIPE, stderr=follower, env={**os.environ, **env}
    )
    os.close(follower)
    received = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            received += chunk
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        status = process.wait(30)
    finally:
        process.kill()
        os.close(leader)
    return status, stdout, received.decode().replace("\r\n", "\n")


class TestTracebackOfAPluginThatFailsToImport:
    @pytest.mark.parametrize("command", ["check", "plugins"])
    def test_on_a_terminal_it_is_printed_as_lines(
        self, broken: tuple[Path, dict[str, str]], command: str
    ):
        config, env = broken
        _, _, terminal = _stderr_on_a_terminal([command, "--config", str(config)], env)
        lines = terminal.splitlines()
        assert "plugin failed" in lines[0]
        assert "Traceback (most recent call last):" in lines
        assert "    import frameiod_no_such_module_anywhere" in lines
        assert lines[-1] == MISSING
        assert "\\n" not in terminal

    def test_off_a_terminal_it_stays_one_json_line(self, broken: tuple[Path, dict[str, str]]):
        config, env = broken
        result = run_cli("check", "--config", str(config), env=env)
        [line] = result.stderr.splitlines()
        logged = json.loads(line)
        assert logged["event"] == "plugin failed"
        assert logged["traceback"].startswith("Traceback (most recent call last):\n")
        assert logged["traceback"].rstrip().endswith(MISSING)


class TestCheckEnds:
    def test_a_failed_plugin_ends_with_problems_found_and_exit_status_1(
        self, broken: tuple[Path, dict[str, str]]
    ):
        config, env = broken
        result = run_cli("check", "--config", str(config), env=env)
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert lines[0] == f"{config}:"
        assert "ok" not in result.stdout.split()
        assert lines[-1] == "problems found: 1 plugin failed to load (broken)"

    def test_a_wrong_config_ends_with_problems_found(self, tmp_path: Path):
        path = write_config(tmp_path, '[server]\nport = "eighty"\n[sources.default]\n')
        result = run_cli("check", "--config", str(path))
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.splitlines()[-1] == "problems found"

    def test_nothing_wrong_ends_with_no_problem(self, tmp_path: Path):
        result = run_cli("check", "--config", str(write_config(tmp_path)))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{tmp_path / 'config.toml'}: ok\n")
        assert "problems" not in result.stdout + result.stderr
