"""frameiod-event-log: append every webhook event to a JSON Lines file, rotated by size.

A debugging aid: each event that reaches the ``default`` source becomes one line::

    {"received_at": "…Z", "event_id": "…", "type": "file.ready", "timestamp": 17…, "payload": {…}}

Settings go in ``[plugins.event_log]`` (see `EventLogConfig`); the entry point names `app`.
"""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from frameiod import App, PluginContext, WebhookEvent
from frameiod.plugins.handlers import DEFAULT_SOURCE

__all__ = ["PRIVATE_MODE", "EventLogConfig", "RotatingLog", "app", "event_line", "make_app"]

MIB = 1024 * 1024
PRIVATE_MODE = 0o600
"""Lines hold whole payloads: the files are readable by their owner only, whatever the umask."""


class EventLogConfig(BaseModel):
    """``[plugins.event_log]``: where the lines go and how much of them to keep."""

    # strict, like frameiod's own tables: `max_bytes = "10"` is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: str = Field(default="events.jsonl", min_length=1)
    """The file; a relative path lives under ``$STATE_DIRECTORY`` or the config file's folder."""
    max_bytes: int = Field(default=10 * MIB, gt=0)
    """Rotate before a line would make the file larger than this."""
    backups: int = Field(default=5, ge=0)
    """How many rotated files (``path.1`` … ``path.N``) to keep; 0 starts the file over."""


def event_line(event: WebhookEvent, received_at: datetime) -> bytes:
    """The JSON line (newline included) that records ``event``, received at ``received_at``."""
    record = {
        "received_at": received_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_id": event.event_id,
        "type": event.type,
        "timestamp": event.timestamp,
        "payload": event.model_dump(mode="json"),
    }
    # ASCII-only JSON: a name holding U+2028 or U+0085 cannot split the line for readers
    # that treat those as line breaks, and a line's length in bytes is its length in chars.
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


class RotatingLog:
    """A file of whole lines, rotated by size like `logging.handlers.RotatingFileHandler`.

    `write` may be called from many threads at once: one lock covers the size check, the
    rotation and the write, so lines never interleave and no file passes ``max_bytes``
    (unless a single line is larger than that on its own).
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    def backup(self, number: int) -> Path:
        """The path of rotated file ``number`` (1 is the most recent)."""
        return self.path.with_name(f"{self.path.name}.{number}")

    def open(self) -> list[tuple[Path, int]]:
        """Create the folder and the file if missing, so an unusable path fails at start-up;
        make the file and its backups owner-only. Returns each file tightened, with the
        mode it had."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _append(self.path):
            pass
        tightened = []
        for file in [self.path, *map(self.backup, range(1, self.backups + 1))]:
            try:
                mode = stat.S_IMODE(file.stat().st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077:
                file.chmod(mode & 0o700)
                tightened.append((file, mode))
        return tightened

    def write(self, line: bytes) -> None:
        """Append ``line`` in one write, rotating first if it would take the file past
        ``max_bytes``. A line into an empty file is written whatever its size."""
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            # Opened per line rather than held open: a file deleted or moved away by hand
            # is recreated, and shutdown has no handle to close under a thread still writing.
            with _append(self.path) as file:
                file.write(line)

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink()
            return
        for number in range(self.backups - 1, 0, -1):
            if self.backup(number).exists():
                os.replace(self.backup(number), self.backup(number + 1))
        # os.replace overwrites: the oldest backup, path.<backups>, is dropped here.
        os.replace(self.path, self.backup(1))


def _append(path: Path) -> io.BufferedWriter:
    """Open ``path`` for appending, created owner-only if missing (the umask can only take
    permissions away, never add them)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_MODE)
    return os.fdopen(descriptor, "ab")


def make_app(*, source: str = DEFAULT_SOURCE) -> App:
    """A new event-log plugin that records every event arriving on ``source``.

    The installed plugin is ``make_app()`` (`app`). The source is fixed here, not in the
    config, because frameiod collects handlers when it loads a plugin, before its config
    is read; to log another source, register ``make_app(source="...")`` as a plugin.
    """
    plugin = App(config_model=EventLogConfig)
    log: RotatingLog | None = None

    @plugin.on_startup
    def open_log(context: PluginContext) -> None:
        nonlocal log
        config = context.plugin_config
        if not isinstance(config, EventLogConfig):  # frameiod validated it with our model
            raise TypeError(f"expected EventLogConfig, got {type(config).__name__}")
        log = RotatingLog(
            context.config.resolve_path(config.path),
            max_bytes=config.max_bytes,
            backups=config.backups,
        )
        for file, mode in log.open():
            context.log.info(
                "event log file made readable by its owner only",
                file=str(file),
                mode_was=f"{mode:04o}",
                mode=f"{mode & 0o700:04o}",
            )
        context.log.info(
            "event log open", path=str(log.path), max_bytes=log.max_bytes, backups=log.backups
        )

    # A plain `def`: frameiod runs it in a thread of its own, so the file I/O never blocks
    # the event loop, and RotatingLog's thread lock keeps concurrent calls' lines whole.
    # `async def` + asyncio.to_thread would need that same thread lock anyway: a call that
    # times out has its task cancelled while its thread goes on writing.
    @plugin.on_webhook("*", source=source, name="log_event")
    def log_event(event: WebhookEvent) -> None:
        if log is None:
            raise RuntimeError("the event log is not open: the plugin has not started")
        log.write(event_line(event, datetime.now(UTC)))

    # No on_shutdown: the file is opened per line, so there is nothing to release.
    return plugin


app = make_app()
