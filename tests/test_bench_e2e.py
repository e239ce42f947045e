"""bench/run.py's end-to-end figures (docs/performance.md): what is read from the handler's
records of one load, and the bound the summary derives from them."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
from support import load_bench


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return load_bench("run")


def test_the_drain_counts_the_loads_own_calls_after_it_ended(run: ModuleType) -> None:
    # A 2-second load from t=10: three events, two of them handled after t=12 (the drain),
    # and an event of another load whose late call must not count.
    received = {"a": 10.0, "b": 10.5, "c": 11.9}
    starts = {"a": 10.1, "b": 12.5, "c": 14.0, "other": 13.0}
    phase = run._Phase(received, starts, 2)
    assert phase.drained() == pytest.approx(2 / (14.0 - 12.0))
    assert phase.backlog() == 2
    assert phase.throughput() == pytest.approx(3 / (14.0 - 10.0))


def test_a_load_with_no_backlog_has_no_drain_rate(run: ModuleType) -> None:
    phase = run._Phase({"a": 10.0, "b": 10.5}, {"a": 10.1, "b": 12.5}, 2)
    assert math.isnan(phase.drained())


def test_the_bound_adds_the_two_parts_costs_per_event(run: ModuleType) -> None:
    # 125 µs an accept and 50 µs a call: 175 µs an event.
    assert run.bound(8000, 20000) == pytest.approx(1e6 / 175, abs=0.001)
    assert run.bound(8000, 8000) == 4000
    assert run.bound(0, 20000) == 0
