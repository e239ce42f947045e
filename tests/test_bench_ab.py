"""bench/ab.py, the alternating comparison of revisions (docs/performance.md): each
revision runs first as often as it runs second, since the second load of a round is not
like the first."""

from __future__ import annotations

from types import ModuleType

import pytest
from support import load_bench


@pytest.fixture(scope="module")
def ab() -> ModuleType:
    return load_bench("ab")


def test_two_revisions_take_turns_in_running_first(ab: ModuleType) -> None:
    orders = [ab.running_order(["old", "new"], number) for number in range(4)]
    assert orders == [["old", "new"], ["new", "old"], ["old", "new"], ["new", "old"]]


def test_over_as_many_rounds_as_revisions_each_runs_once_in_each_place(ab: ModuleType) -> None:
    revisions = ["a", "b", "c"]
    orders = [ab.running_order(revisions, number) for number in range(3)]
    for revision in revisions:
        assert sorted(order.index(revision) for order in orders) == [0, 1, 2]
    assert all(sorted(order) == revisions for order in orders)
