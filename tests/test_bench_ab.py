"""bench/ab.py, the alternating comparison of revisions (docs/performance.md): each
revision runs first as often as it runs second, since the second load of a round is not
like the first."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def ab(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCH))  # ab.py imports run.py beside it
    spec = importlib.util.spec_from_file_location("bench_ab", BENCH / "ab.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("run", None)


def test_two_revisions_take_turns_in_running_first(ab: ModuleType) -> None:
    orders = [ab.running_order(["old", "new"], number) for number in range(4)]
    assert orders == [["old", "new"], ["new", "old"], ["old", "new"], ["new", "old"]]


def test_over_as_many_rounds_as_revisions_each_runs_once_in_each_place(ab: ModuleType) -> None:
    revisions = ["a", "b", "c"]
    orders = [ab.running_order(revisions, number) for number in range(3)]
    for revision in revisions:
        assert sorted(order.index(revision) for order in orders) == [0, 1, 2]
    assert all(sorted(order) == revisions for order in orders)
