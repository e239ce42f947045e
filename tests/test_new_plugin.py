"""`frameiod new-plugin NAME`: the package it writes, and the names and folders it refuses.
(The package installed, checked, run and tested: tests/test_install.py.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import run_cli

from frameiod import __version__

FILES = {
    "pyproject.toml",
    "README.md",
    "frameiod_greeter/__init__.py",
    "tests/test_greeter.py",
}


def _written(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("name", ["greeter", "frameiod-greeter"])
def test_a_package_with_the_entry_point_a_handler_a_test_and_a_readme(tmp_path: Path, name: str):
    result = run_cli("new-plugin", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "frameiod-greeter"
    assert result.stdout.splitlines()[0] == (
        "wrote frameiod-greeter into frameiod-greeter/ (plugin greeter)"
    )
    assert "frameiod install -e frameiod-greeter" in result.stdout
    assert _written(folder) == FILES
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["name"] == "frameiod-greeter"
    assert project["entry-points"]["frameiod.plugins"] == {"greeter": "frameiod_greeter:app"}
    assert project["dependencies"] == [f"frameiod>={__version__}"]
    code = (folder / "frameiod_greeter" / "__init__.py").read_text()
    assert 'extra="forbid"' in code
    assert '@app.on_webhook("file.ready")' in code
    assert "[plugins.greeter]" in (folder / "README.md").read_text()


def test_the_package_passes_ruff_as_its_author_would_run_it(tmp_path: Path):
    """Lint-clean on ruff's defaults, formatted: what the author starts from is not a
    diff to clean up."""
    folder = tmp_path / "plugin"
    assert run_cli("new-plugin", "my-plugin", "--dir", str(folder)).returncode == 0
    assert _written(folder) == {
        "pyproject.toml",
        "README.md",
        "frameiod_my_plugin/__init__.py",
        "tests/test_my_plugin.py",
    }
    ruff = str(Path(sys.executable).with_name("ruff"))
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *command, "--isolated", "--no-cache", "."],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name", ["Greeter", "1greeter", "my plugin", "greeter-", "a--b", "frameiod-", "gr\x1beeter"]
)
def test_a_name_that_makes_no_plugin_name_is_refused(tmp_path: Path, name: str):
    result = run_cli("new-plugin", name, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("frameiod new-plugin: refused "), line
    assert "a plugin name is lowercase letters, digits" in line
    assert "\x1b" not in line
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_refused_and_left_as_it_was(tmp_path: Path):
    folder = tmp_path / "frameiod-greeter"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    for argv in (["greeter"], ["other", "--dir", str(folder)]):
        result = run_cli("new-plugin", *argv, cwd=tmp_path)
        assert result.returncode == 2
        assert "it exists; give --dir a new folder" in result.stderr
    assert _written(folder) == {"mine.txt"}
