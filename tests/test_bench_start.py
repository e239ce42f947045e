"""`make bench`'s start measurement runs to its end: it names the example plugins a start
loads, so another installed plugin (frameiod-otel came after it) cannot make it fail
after the whole bench has run."""

from __future__ import annotations

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
