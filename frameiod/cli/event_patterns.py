"""Event types as ``frameiod webhooks`` reads and prints them: ``file.ready,comment.*``
expanded into catalogue names, and catalogue names folded back into patterns."""

from __future__ import annotations

from frameiod.events import EVENT_TYPES
from frameiod.patterns import matches, matching_event_types, pattern_problem
from frameiod.terminal import plural

__all__ = ["compact_events", "expand_events"]


def expand_events(text: str) -> list[str]:
    """Expand comma-separated event types and patterns (``file.ready,comment.*``, ``*``)
    into catalogue names, in catalogue order; ValueError names a pattern matching none."""
    patterns = [pattern.strip() for pattern in text.split(",") if pattern.strip()]
    if not patterns:
        raise ValueError("--events names no event type")
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise ValueError(f"--events: {problem}")
    return matching_event_types(patterns)


def compact_events(events: list[str]) -> str:
    """``file.ready, comment.* (6 events)``: whole groups of the catalogue as ``group.*``."""
    chosen = set(events)
    if chosen >= set(EVENT_TYPES):
        return f"* (all {len(chosen)} events)"
    parts: list[str] = []
    for name in [*EVENT_TYPES, *sorted(chosen - set(EVENT_TYPES))]:
        if name not in chosen:
            continue
        group = name.split(".", 1)[0] + ".*"
        members = [other for other in EVENT_TYPES if matches(group, other)]
        if len(members) > 1 and chosen >= set(members):
            if group not in parts:
                parts.append(group)
        else:
            parts.append(name)
    count = len(chosen)
    return f"{', '.join(parts)} ({plural(count, 'event')})"
