"""`make bench`'s start measurement runs to its end: it names the example plugins a start
loads, so another installed plugin (frameiod-otel came after it) cannot make it fail
after the whole bench has run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/run.py as ``python bench/run.py`` imports it: its folder first on the path
    (only while it is imported: bench/ holds names the other tests must not see)."""
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    sys.path.insert(0, str(RUN.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUN.parent))
    return module


@pytest.mark.parametrize("examples", [True, False])
def test_a_start_loads_what_it_measures(bench: ModuleType, tmp_path: Path, examples: bool):
    # measure_start raises unless the daemon's listening line names exactly the plugins
    # the measurement is of.
    measured = bench.measure_start(tmp_path, examples=examples, settle=0.1)
    assert measured["ready_s"] > 0
    assert measured["idle_rss_mib"] > 0
