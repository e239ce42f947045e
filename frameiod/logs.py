"""structlog configuration: one event per line, JSON when not on a terminal.

frameiod's own loggers go straight to structlog; records from the standard library
(aiohttp, asyncio) are rendered by the same processors, so the whole stream is one format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Timestamp:
    """Adds ``timestamp`` as ISO 8601 UTC with microseconds (``…T21:48:16.123456Z``).

    structlog's TimeStamper builds a datetime per line; this formats the date and time
    once a second and appends the fraction, since every accepted request logs a line.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _fallback(value: Any) -> str:
    return repr(value)


# Built once: json.dumps with a ``default`` builds a new encoder on every call.
_encode = json.JSONEncoder(default=_fallback).encode


def _render_json(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    return _encode(event_dict)


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Send every log line to ``stream`` (stdout by default) at ``level`` and above.

    ``fmt="auto"`` renders for humans on a terminal and as JSON otherwise (journald,
    containers, files). Safe to call again, e.g. when the level changes.
    """
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        _render_json
        if as_json
        # plain_traceback: with `rich` installed, the default would print local variables,
        # and a local may hold a secret.
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Timestamp(),
    ]
    structlog.configure(
        # ConsoleRenderer pretty-prints exc_info itself; JSON needs it turned into text.
        processors=[*shared, *([structlog.processors.format_exc_info] * as_json), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
