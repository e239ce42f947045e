"""structlog configuration: one event per line, JSON when not on a terminal.

Plugins' loggers are structlog's; frameiod's own (`get_logger`) go through structlog too,
except in the daemon, where they take the same chain directly. Records from the standard
library (aiohttp, asyncio) are rendered by the same steps, so the whole stream is one format.

structlog is configured with one processor, a `_Chain` that holds the level, format and
stream and is also the logger lines are written to. `configure_logging` changes those
settings in the chain already configured rather than configuring a new one, so a reload
reaches every logger, including those a plugin bound at start-up and, in the daemon,
loggers cached on first use. Only structlog's public configuration is used.

Every accepted event logs two lines (accepted, handler finished), so a line's cost shows in
throughput: JSON is encoded with orjson, the chain is one call, and in the daemon
frameiod's own modules (`Logger`) skip structlog's per-call layers.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from frameiod.terminal import printable

__all__ = ["LastingFault", "Logger", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
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
_encode_stdlib = json.JSONEncoder(default=_fallback).encode


def _encode(event_dict: EventDict) -> str:
    try:
        # orjson: every accepted event writes lines, and the stdlib's encoder is the slow part.
        return orjson.dumps(event_dict, default=_fallback).decode()
    except (orjson.JSONEncodeError, TypeError):
        # What orjson refuses and the stdlib takes: integers beyond 64 bits, lone
        # surrogates, keys that are not strings.
        return _encode_stdlib(event_dict)


def _render_json(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    # ConsoleRenderer pretty-prints exc_info itself; JSON needs it turned into text.
    return _encode(structlog.processors.format_exc_info(logger, method, event_dict))


class _Console:
    """structlog's ConsoleRenderer, with a ``traceback`` field (a traceback already
    formatted as text, as ``plugin failed`` carries it) written under the line as lines of
    its own, the way the renderer writes ``exc_info``, instead of one quoted string of
    ``\\n``. JSON keeps it a field: a log line stays one line."""

    def __init__(self, colors: bool) -> None:
        # plain_traceback: with `rich` installed, the default would print local
        # variables, and a local may hold a secret.
        self._render = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        text = event_dict.pop("traceback", None)
        line = self._render(logger, method, event_dict)
        if not isinstance(text, str) or not text.strip():
            return line
        # Escaped as everything else on the terminal: an exception's message is any text.
        return "\n".join([line, *(printable(part) for part in text.rstrip().splitlines())])


class _Chain:
    """The whole chain as structlog's one processor, the settings it reads at each line,
    and the logger it writes to (see the module docstring)."""

    def __init__(self) -> None:
        self.level = logging.INFO
        self.render: Processor = _render_json
        self.stream: TextIO = sys.stdout
        self.lock = threading.Lock()
        self.direct = False
        """frameiod's own loggers write without structlog (see `Logger`)."""
        self._timestamp = _Timestamp()

    def stamped(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        """Add what every line carries: bound context variables, the level, the time."""
        structlog.contextvars.merge_contextvars(logger, method, event_dict)
        event_dict["level"] = _METHOD_LEVELS.get(method, method)
        return self._timestamp(logger, method, event_dict)

    def rendered(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        """The line in the format in force."""
        return self.render(logger, method, event_dict)

    def line(self, method: str, event_dict: EventDict) -> Any:
        """The rendered line, or None below the level."""
        if _LEVELS.get(method, logging.INFO) < self.level:
            return None
        return self.render(self, method, self.stamped(self, method, event_dict))

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        """The chain as structlog's processor."""
        line = self.line(method, event_dict)
        if line is None:
            raise structlog.DropEvent
        return line

    def emit(self, method: str, event_dict: EventDict) -> None:
        """The chain and the write, without structlog."""
        line = self.line(method, event_dict)
        if line is not None:
            self.msg(line)

    def msg(self, message: str) -> None:
        """Write one line and flush it (a crash must not swallow the last lines), whole,
        from any thread."""
        with self.lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _configured_chain() -> _Chain | None:
    """The chain structlog is configured with, if it is (not, e.g., under capture_logs)."""
    processors = structlog.get_config()["processors"]
    if len(processors) == 1 and isinstance(processors[0], _Chain):
        return processors[0]
    return None


_METHOD_LEVELS = {"warn": "warning", "exception": "error"}
"""Method names as structlog's add_log_level names them: ``warn`` is the stdlib's old alias."""


class Logger:
    """What frameiod's own modules log with: ``info``, ``warning``, ``error``, ``exception``.

    In the daemon (``configure_logging(cache=True)``) a line goes straight to the
    configured chain, skipping structlog's lazy proxy and bound-logger layers; the line is
    the same. Elsewhere it goes through structlog, so that tests' ``capture_logs`` sees it.
    """

    __slots__ = ("_chain", "_structlog")

    def __init__(self, name: str) -> None:
        self._structlog = structlog.get_logger(name)
        self._chain: _Chain | None = None

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        chain = self._chain
        if chain is None or not chain.direct:
            # Looked up again only while not direct: then each line costs a lookup anyway.
            chain = self._chain = _configured_chain()
            if chain is None or not chain.direct:
                getattr(self._structlog, method)(event, **fields)
                return
        fields["event"] = event
        chain.emit(method, fields)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at debug level."""
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at info level."""
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at warning level."""
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` with ``fields`` at error level."""
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at error level with the exception being handled (structlog's
        ``exception``)."""
        fields.setdefault("exc_info", True)
        self._log("error", event, fields)


def get_logger(name: str) -> Logger:
    """A logger for a frameiod module (plugins get structlog's, bound to their name)."""
    return Logger(name)


class LastingFault:
    """Logs a failure that repeats (a full disk, an unreachable Redis) without flooding.

    The first failure is logged at once; while it lasts, at most one line per ``every``
    seconds, counting the failures since the last line; and one line when it clears. An
    operator reading at 3 a.m. sees when it began, that it goes on, and when it ended,
    instead of a line per retry.
    """

    def __init__(
        self,
        log: Logger,
        event: str,
        *,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._every = every
        self._clock = clock
        self._since: float | None = None  # when the failure began, while it lasts
        self._logged_at = 0.0
        self._unlogged = 0  # failures since the last line
        self.failures = 0
        """Failures since it began (0 while nothing is failing)."""

    @property
    def active(self) -> bool:
        """Whether the failure is going on."""
        return self._since is not None

    def failed(self, level: str = "warning", **fields: Any) -> None:
        """Record one failure; log it if it is the first or the last line is ``every`` old."""
        now = self._clock()
        self.failures += 1
        self._unlogged += 1
        if self._since is None:
            self._since = now
        elif now - self._logged_at < self._every:
            return
        if self.failures > 1:
            fields["failures"] = self._unlogged
            fields["failing_for_s"] = round(now - self._since, 1)
        getattr(self._log, level)(self._event, **fields)
        self._logged_at = now
        self._unlogged = 0

    def cleared(self, event: str, **fields: Any) -> None:
        """Log ``event`` if a failure was going on, with how long and how often; then reset."""
        if self._since is None:
            return
        self._log.info(
            event,
            **fields,
            failures=self.failures,
            failing_for_s=round(self._clock() - self._since, 1),
        )
        self._since = None
        self._unlogged = 0
        self.failures = 0


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
    *,
    cache: bool | None = None,
) -> None:
    """Send every log line to ``stream`` (stdout by default) at ``level`` and above.

    ``fmt="auto"`` renders for humans on a terminal and as JSON otherwise (journald,
    containers, files). Safe to call again, e.g. when the level changes. ``cache`` lets
    each logger be built once, on first use, and frameiod's own write without structlog
    (`Logger`): for the daemon's process, not for tests that swap structlog's
    configuration (``capture_logs``) under loggers already used. None keeps what the last
    call chose.
    """
    if cache is None:
        cache = bool(structlog.get_config()["cache_logger_on_first_use"])
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    chain = _configured_chain() or _Chain()
    with chain.lock:
        chain.level = _LEVELS[level]
        chain.direct = cache
        chain.stream = stream
        chain.render = _render_json if as_json else _Console(colors=stream.isatty())
    structlog.configure(
        processors=[chain],
        # Levels are filtered by the chain, whose level a reload can change.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=lambda *args: chain,
        cache_logger_on_first_use=cache,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[chain.stamped, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, chain.rendered],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chain.level)
