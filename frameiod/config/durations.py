"""Durations as a config file writes them: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1.5h"``."""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = ["AnswerDeadline", "Duration", "format_duration", "parse_duration"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Parse ``"250ms"``, ``"30s"``, ``"5m"`` or ``"1.5h"`` into seconds."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "duration",
            'expected a duration like "30s" or "5m" (units ms, s, m, h), got {got}',
            {"got": json.dumps(value)},
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def format_duration(seconds: float) -> str:
    """Render seconds the way a config file would say them (``300.0`` → ``"5m"``)."""
    for unit in ("h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise PydanticCustomError(
            "duration",
            "expected a duration greater than zero, got {got}",
            {"got": json.dumps(value)},
        )
    return seconds


Duration = Annotated[float, BeforeValidator(_positive_duration)]


# Frame.io gives up on a webhook or a custom action after 5 s (and sends a webhook again).
_FRAMEIO_WAITS_SECONDS = 5.0


def _inside_frameio_wait(value: object) -> float:
    seconds = _positive_duration(value)
    if seconds >= _FRAMEIO_WAITS_SECONDS:
        raise PydanticCustomError(
            "duration",
            "expected a duration under 5s, the time Frame.io waits for an answer "
            "(an answer later than that is never read), got {got}",
            {"got": json.dumps(value)},
        )
    return seconds


AnswerDeadline = Annotated[float, BeforeValidator(_inside_frameio_wait)]
"""A duration by which Frame.io must have its answer: under its 5-second wait."""
