"""Event-type patterns: ``"file.ready"`` (one type), ``"file.*"`` (a group), ``"*"`` (all).

Pure: strings in, answers out. Handlers subscribe with these patterns, and
``frameiod webhooks`` expands them into the event types it registers in Frame.io.
"""

from __future__ import annotations

from collections.abc import Iterable

from frameiod.events import EVENT_TYPES, closest_event_type

__all__ = ["matches", "matching_event_types", "pattern_problem"]


def matches(pattern: str, event_type: str) -> bool:
    """True if ``pattern`` covers ``event_type``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def pattern_problem(pattern: str) -> str | None:
    """Why an event-type pattern can never match a Frame.io V4 event, or None if it can."""
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    if pattern.endswith(".*"):
        group = pattern[:-1]
        if any(name.startswith(group) for name in EVENT_TYPES):
            return None
        return f"no Frame.io event type starts with {group!r}"
    hint = closest_event_type(pattern)
    return f"{pattern!r} is not a Frame.io event type" + (
        f" (did you mean {hint!r}?)" if hint else ""
    )


def matching_event_types(patterns: Iterable[str]) -> list[str]:
    """The Frame.io event types any of ``patterns`` covers, in the catalogue's order."""
    patterns = tuple(patterns)
    return [name for name in EVENT_TYPES if any(matches(p, name) for p in patterns)]
