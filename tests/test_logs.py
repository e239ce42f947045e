"""The log format: one JSON object per line, with a UTC ISO 8601 timestamp."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog

from frameiod.logs import LastingFault, configure_logging, get_logger

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(autouse=True)
def _logging_as_tests_expect() -> Iterator[None]:
    """Leave structlog as the other tests (capture_logs, in the same worker) expect it."""
    yield
    configure_logging(cache=False)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_event_fields_and_a_utc_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    before = datetime.now(UTC)
    structlog.get_logger("t").info("webhook accepted", source="default", handlers=2)
    after = datetime.now(UTC)

    (line,) = _lines(stream)
    assert {k: line[k] for k in ("event", "level", "source", "handlers")} == {
        "event": "webhook accepted",
        "level": "info",
        "source": "default",
        "handlers": 2,
    }
    assert ISO_UTC.fullmatch(line["timestamp"]), line["timestamp"]
    stamped = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamped <= after


def test_timestamps_of_successive_lines_never_go_back() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    for number in range(2000):
        structlog.get_logger("t").info("tick", number=number)
    stamps = [line["timestamp"] for line in _lines(stream)]
    assert len(stamps) == 2000
    assert stamps == sorted(stamps)


def test_values_json_cannot_encode_are_written_as_their_repr() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque 7>"

    structlog.get_logger("t").warning("odd value", value=Opaque())
    (line,) = _lines(stream)
    assert line["value"] == "<opaque 7>"
    assert line["level"] == "warning"


def test_below_the_level_nothing_is_written() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    assert [line["event"] for line in _lines(stream)] == ["loud"]


def test_loggers_bound_or_cached_before_a_reconfiguration_follow_it() -> None:
    """What a reload relies on: the daemon caches its loggers, and a plugin binds its own
    at start-up; a new level or format must still reach both."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first, cache=True)
    cached = structlog.get_logger("t")
    bound = structlog.get_logger("t").bind(plugin="p")
    cached.info("one")
    bound.info("two")

    configure_logging("warning", "console", second)
    cached.info("dropped")
    bound.info("dropped too")
    cached.warning("three")
    bound.error("four")

    assert [line["event"] for line in _lines(first)] == ["one", "two"]
    rendered = second.getvalue()
    assert "dropped" not in rendered
    assert "three" in rendered
    assert "four" in rendered
    assert "plugin=p" in rendered
    assert not rendered.lstrip().startswith("{")  # console, not JSON


def test_values_the_fast_encoder_refuses_are_still_written() -> None:
    """orjson stops at 64-bit integers and lone surrogates; the line must not be lost."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    structlog.get_logger("t").info("big", number=2**70, text="\ud800")
    (line,) = _lines(stream)
    assert line["number"] == 2**70
    assert line["text"] == "\ud800"


def test_lines_carry_context_variables_and_tracebacks() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream, cache=True)
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        try:
            raise ValueError("broken handler")
        except ValueError:
            log.exception("handler failed", handler="h")
    finally:
        structlog.contextvars.clear_contextvars()
    log.warn("after")

    failed, after = _lines(stream)
    assert failed["request_id"] == "r-1"
    assert failed["level"] == "error"
    assert "ValueError: broken handler" in failed["exception"]
    assert "request_id" not in after
    assert after["level"] == "warning"


def test_standard_library_records_share_the_format() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("aiohttp.server").warning("bad request from %s", "127.0.0.1")
    (line,) = _lines(stream)
    assert line["event"] == "bad request from 127.0.0.1"
    assert line["level"] == "warning"
    assert line["logger"] == "aiohttp.server"
    assert ISO_UTC.fullmatch(line["timestamp"])


def _without_time(line: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in line.items() if key != "timestamp"}


def test_frameiods_own_loggers_write_the_same_lines_in_the_daemon_and_elsewhere() -> None:
    """The daemon's loggers skip structlog's layers; the lines must not change."""
    lines = {}
    for direct in (True, False):
        stream = io.StringIO()
        configure_logging("info", "json", stream, cache=direct)
        log = get_logger("frameiod.t")
        log.debug("hidden")
        log.info("webhook accepted", source="default", handlers=2, duration_ms=0.5)
        log.warning("slow", seconds=3)
        try:
            raise KeyError("k")
        except KeyError:
            log.exception("failed", handler="h")
        lines[direct] = _lines(stream)
    assert len(lines[True]) == 3
    assert [_without_time(line) for line in lines[True]] == [
        _without_time(line) for line in lines[False]
    ]
    assert lines[True][2]["level"] == "error"
    assert "KeyError: 'k'" in lines[True][2]["exception"]


def test_capture_logs_sees_every_line_under_this_configuration() -> None:
    """capture_logs swaps the chain inside the configured list; no shortcut may miss it."""
    configure_logging("info", "json", io.StringIO(), cache=False)
    with structlog.testing.capture_logs() as captured:
        get_logger("frameiod.t").warning("webhook rejected", status=401)
        structlog.get_logger("plugin").info("posted", plugin="p")
    assert captured == [
        {"event": "webhook rejected", "status": 401, "log_level": "warning"},
        {"event": "posted", "plugin": "p", "log_level": "info"},
    ]


class TestLastingFault:
    """A failure that repeats is logged when it starts, then once a minute, and when it
    clears: a full disk retried every 200 ms logged five lines a second before."""

    def _lines(self, stream: io.StringIO) -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_a_lasting_failure_is_logged_at_its_start_once_a_minute_and_when_it_clears(
        self,
    ) -> None:
        stream = io.StringIO()
        configure_logging("info", "json", stream=stream)
        now = [1000.0]
        fault = LastingFault(get_logger("t"), "checkpoint failed", clock=lambda: now[0])
        for _ in range(300):  # one minute of failures every 200 ms
            fault.failed(detail="disk full")
            now[0] += 0.2
        fault.failed(detail="disk full")  # a minute after the first line
        now[0] += 5
        fault.cleared("checkpoints work again")
        fault.cleared("checkpoints work again")  # nothing was failing: no line
        lines = self._lines(stream)
        assert [line["event"] for line in lines] == [
            "checkpoint failed",
            "checkpoint failed",
            "checkpoints work again",
        ]
        assert "failures" not in lines[0]
        assert (lines[1]["failures"], lines[1]["failing_for_s"]) == (300, 60.0)
        assert (lines[2]["failures"], lines[2]["failing_for_s"]) == (301, 65.0)
        assert not fault.active

    def test_a_new_failure_after_it_cleared_is_logged_at_once(self) -> None:
        stream = io.StringIO()
        configure_logging("info", "json", stream=stream)
        now = [0.0]
        fault = LastingFault(get_logger("t"), "probe failed", clock=lambda: now[0])
        fault.failed("error")
        fault.cleared("probe works")
        now[0] += 1
        fault.failed("error")
        lines = self._lines(stream)
        assert [(line["event"], line["level"]) for line in lines] == [
            ("probe failed", "error"),
            ("probe works", "info"),
            ("probe failed", "error"),
        ]
