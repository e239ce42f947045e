"""`make bench`'s start measurement runs to its end: it names the example plugins a start
loads, so another installed plugin (frameiod-otel came after it) cannot make it fail
after the whole bench has run. And it measures an operator's install, not the tests'."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from support import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/run.py, as ``python bench/run.py`` imports it."""
    return load_bench("run")


@pytest.mark.parametrize("examples", [True, False])
def test_a_start_loads_what_it_measures(bench: ModuleType, tmp_path: Path, examples: bool):
    # measure_start raises unless the daemon's listening line names exactly the plugins
    # the measurement is of.
    measured = bench.measure_start(tmp_path, examples=examples, settle=0.1)
    assert measured["ready_s"] > 0
    assert measured["idle_rss_mib"] > 0


# Prints each module named on the command line that the interpreter can import.
_FIND = "import sys; from importlib.util import find_spec as f; print(*filter(f, sys.argv[1:]))"


def test_starts_are_measured_in_an_operators_install(bench: ModuleType, tmp_path: Path):
    # The venv the tests run in holds their own packages, and httpcore imports trio (which
    # selenium brings) when it is present: measured there, idle RSS would count it.
    python = bench.operators_install(tmp_path / "installed")
    found = subprocess.run(
        [python, "-c", _FIND, "frameiod", "frameiod_notify", "trio", "pytest", "selenium"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == ["frameiod", "frameiod_notify"]
    measured = bench.measure_start(tmp_path, examples=True, settle=0.1, python=python)
    assert measured["idle_rss_mib"] > 0
