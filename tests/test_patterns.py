"""Event-type patterns, the one matcher handlers and `frameiod webhooks` share."""

from __future__ import annotations

import pytest

from frameiod.events import EVENT_TYPES
from frameiod.patterns import matches, matching_event_types, pattern_problem


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "file.ready", True),
        ("file.ready", "file.ready", True),
        ("file.ready", "file.created", False),
        ("file.*", "file.ready", True),
        ("file.*", "folder.created", False),
        ("file.*", "filex.ready", False),
    ],
)
def test_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


def test_problems_name_the_fix() -> None:
    assert pattern_problem("*") is None
    assert pattern_problem("file.*") is None
    assert pattern_problem("file.ready") is None
    assert pattern_problem("fiel.*") == "no Frame.io event type starts with 'fiel.'"
    assert pattern_problem("file.redy") == (
        "'file.redy' is not a Frame.io event type (did you mean 'file.ready'?)"
    )


def test_matching_event_types_keeps_the_catalogues_order() -> None:
    assert matching_event_types(["*"]) == list(EVENT_TYPES)
    files = matching_event_types(["file.*", "comment.created"])
    assert files == [t for t in EVENT_TYPES if t.startswith("file.") or t == "comment.created"]
    assert matching_event_types(["nothing.here"]) == []
