"""CI runs what the docs promise: the suite on the newest dependencies, on the lowest
versions pyproject.toml allows, and on every other Python it claims. A floor that does not
install or work (prometheus-client 0.20 lacked `prometheus_client.aiohttp`) fails CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _target(name: str) -> str:
    """The recipe of a Makefile target."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(name)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no target {name} in the Makefile"
    return match.group(1)


def test_ci_runs_the_suite_on_newest_lowest_and_every_python() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"for target in test test-lowest test-newest test-pythons", run)
    assert "exit 1" in run  # one failed run fails CI
    lowest = _target("test-lowest")
    assert "--resolution lowest-direct" in lowest
    assert "pytest" in lowest


def test_ci_runs_the_suite_on_the_newest_releases_beyond_our_pins() -> None:
    """aiohttp's request handler is subclassed (frameiod/http/aiohttp_hooks.py) under a
    minor-version pin: its newest release is tried anyway, so a break shows the day it ships."""
    newest = _target("test-newest")
    assert "--override" in newest
    assert "pytest" in newest
    listed = re.search(r"^NEWEST *[:?]?= *(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert listed
    assert set(listed.group(1).split()) >= {"aiohttp", "structlog", "pluggy", "prometheus-client"}


def test_every_python_pyproject_claims_is_tested() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    claimed = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert claimed
    makefile = (ROOT / "Makefile").read_text()
    lowest = re.search(r"^LOWEST_PYTHON *[:?]?= *3\.(\d+)", makefile, re.MULTILINE)
    extra = re.search(r"^EXTRA_PYTHONS *[:?]?= *(.*)$", makefile, re.MULTILINE)
    assert lowest
    assert extra
    tested = {int(lowest.group(1))} | {int(v.split(".")[1]) for v in extra.group(1).split()}
    assert tested >= set(range(int(claimed.group(1)), 14))


def test_every_direct_dependency_has_a_floor() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    assert [r for r in requirements if ">=" not in r] == []
