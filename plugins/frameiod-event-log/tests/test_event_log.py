"""The event-log plugin, driven through a real daemon (`frameiod_daemon`) and, for the
rotation rules, through `RotatingLog` directly."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from frameiod_event_log import MIB, EventLogConfig, RotatingLog, app, event_line, make_app

from frameiod.config import ConfigError
from frameiod.events import example_payload, parse_webhook


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON; fails on a partial last line."""
    text = path.read_text(encoding="ascii")
    assert text == "" or text.endswith("\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


def logged_ids(path: Path) -> list[str]:
    return [record["event_id"] for record in read_lines(path)]


class TestLines:
    async def test_each_event_is_one_line_with_its_id_type_timestamp_and_payload(
        self, frameiod_daemon, tmp_path
    ):
        daemon = await frameiod_daemon({"event_log": app})
        payload = example_payload("file.ready")
        # Unknown fields are kept, and non-ASCII text survives as JSON escapes.
        payload["resource"]["name"] = "Schnitt \u2013 Fassung 2\u2028.mov"
        payload["future_field"] = {"nested": [1, 2]}
        before = datetime.now(UTC)

        sent = await daemon.send(**payload)

        assert [o.status for o in sent.outcomes] == ["ok"]
        raw = (tmp_path / "events.jsonl").read_bytes()
        assert raw.isascii()
        assert raw.count(b"\n") == 1
        [record] = read_lines(tmp_path / "events.jsonl")
        assert list(record) == ["received_at", "event_id", "type", "timestamp", "payload"]
        assert record["event_id"] == sent.id
        assert record["type"] == "file.ready"
        assert record["payload"] == payload
        assert abs(record["timestamp"] - time.time()) < 60
        received = datetime.fromisoformat(record["received_at"])
        assert record["received_at"].endswith("Z")
        assert before <= received <= datetime.now(UTC)

    async def test_every_type_is_logged_in_order_including_non_asset_and_unknown_types(
        self, frameiod_daemon, tmp_path
    ):
        daemon = await frameiod_daemon({"event_log": app})
        types = ["file.ready", "comment.created", "project.updated", "share.viewed", "x.new"]

        ids = [(await daemon.send(event_type)).id for event_type in types]

        records = read_lines(tmp_path / "events.jsonl")
        assert [r["type"] for r in records] == types
        assert [r["event_id"] for r in records] == ids
        assert [r["payload"]["type"] for r in records] == types

    async def test_a_missing_optional_object_is_logged_as_null(self, frameiod_daemon, tmp_path):
        daemon = await frameiod_daemon({"event_log": app})
        body = {"type": "comment.created", "resource": {"id": "c1", "type": "comment"}}

        status, answer = await daemon.post(json.dumps(body).encode())
        await daemon.daemon.dispatcher.wait_for(answer["id"])

        assert status == 202
        [record] = read_lines(tmp_path / "events.jsonl")
        assert record["payload"]["resource"] == {"id": "c1", "type": "comment"}
        assert record["payload"]["workspace"] is None

    async def test_only_the_configured_source_is_logged(self, frameiod_daemon, tmp_path):
        settings = (
            '[sources.uploads]\nsecrets = ["uploads-secret"]\n'
            '[plugins.uploads_log]\npath = "uploads.jsonl"\n'
        )
        daemon = await frameiod_daemon(
            {"event_log": app, "uploads_log": make_app(source="uploads")}, settings=settings
        )

        on_default = await daemon.send("file.ready")
        on_uploads = await daemon.send("file.created", source="uploads")

        assert logged_ids(tmp_path / "events.jsonl") == [on_default.id]
        assert logged_ids(tmp_path / "uploads.jsonl") == [on_uploads.id]

    async def test_50_concurrent_events_give_50_whole_lines(self, frameiod_daemon, tmp_path):
        daemon = await frameiod_daemon({"event_log": app})

        sent = await asyncio.gather(*(daemon.send("file.ready") for _ in range(50)))

        assert all(s.status == 202 for s in sent)
        assert sorted(logged_ids(tmp_path / "events.jsonl")) == sorted(s.id for s in sent)

    def test_the_entry_point_names_the_app(self):
        [entry_point] = importlib.metadata.entry_points(group="frameiod.plugins", name="event_log")
        assert entry_point.load() is app


class TestPath:
    async def test_a_relative_path_resolves_under_the_config_folder(
        self, frameiod_daemon, tmp_path
    ):
        daemon = await frameiod_daemon(
            {"event_log": app}, settings='[plugins.event_log]\npath = "logs/events.jsonl"\n'
        )

        sent = await daemon.send("file.ready")

        assert logged_ids(tmp_path / "logs" / "events.jsonl") == [sent.id]
        assert not (tmp_path / "events.jsonl").exists()

    async def test_an_absolute_path_is_used_as_it_is(self, frameiod_daemon, tmp_path):
        target = tmp_path / "elsewhere" / "deep" / "log.jsonl"
        daemon = await frameiod_daemon(
            {"event_log": app}, settings=f"[plugins.event_log]\npath = {json.dumps(str(target))}\n"
        )

        sent = await daemon.send("file.ready")

        assert logged_ids(target) == [sent.id]

    async def test_the_file_exists_from_start_up(self, frameiod_daemon, tmp_path):
        await frameiod_daemon({"event_log": app})
        assert (tmp_path / "events.jsonl").read_bytes() == b""

    async def test_an_unusable_path_fails_the_plugin_at_start_up_and_not_the_daemon(
        self, frameiod_daemon, tmp_path
    ):
        (tmp_path / "logs").mkdir()
        daemon = await frameiod_daemon(
            {"event_log": app}, settings='[plugins.event_log]\npath = "logs"\n'
        )

        info = daemon.daemon.plugins.plugins["event_log"]
        assert info.status == "failed"
        assert "IsADirectoryError" in (info.reason or "")
        sent = await daemon.send("file.ready")
        assert sent.status == 202
        assert sent.outcomes == []


class TestRotation:
    async def test_the_daemon_rotates_and_keeps_at_most_backups_files(
        self, frameiod_daemon, tmp_path
    ):
        # max_bytes = 1: every line but the first into an empty file rotates.
        daemon = await frameiod_daemon(
            {"event_log": app}, settings="[plugins.event_log]\nmax_bytes = 1\nbackups = 2\n"
        )
        path = tmp_path / "events.jsonl"

        ids = [(await daemon.send("file.ready")).id for _ in range(5)]

        assert logged_ids(path) == [ids[4]]
        assert logged_ids(tmp_path / "events.jsonl.1") == [ids[3]]
        assert logged_ids(tmp_path / "events.jsonl.2") == [ids[2]]
        assert not (tmp_path / "events.jsonl.3").exists()

    def test_a_line_that_fits_exactly_does_not_rotate(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=8, backups=3)
        log.write(b"aaa\n")
        log.write(b"bbb\n")
        assert (tmp_path / "log").read_bytes() == b"aaa\nbbb\n"
        assert not log.backup(1).exists()

    def test_a_line_that_would_exceed_max_bytes_rotates_first(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=8, backups=3)
        for line in (b"aaa\n", b"bbb\n", b"ccc\n"):
            log.write(line)
        assert (tmp_path / "log").read_bytes() == b"ccc\n"
        assert log.backup(1).read_bytes() == b"aaa\nbbb\n"

    def test_backups_shift_up_and_the_oldest_is_dropped(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=4, backups=3)
        for number in range(6):
            log.write(f"{number:03}\n".encode())
        assert (tmp_path / "log").read_bytes() == b"005\n"
        assert [log.backup(n).read_bytes() for n in (1, 2, 3)] == [b"004\n", b"003\n", b"002\n"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "log.1", "log.2", "log.3"]

    def test_zero_backups_starts_the_file_over(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=8, backups=0)
        for line in (b"aaa\n", b"bbb\n", b"ccc\n"):
            log.write(line)
        assert (tmp_path / "log").read_bytes() == b"ccc\n"
        assert [p.name for p in tmp_path.iterdir()] == ["log"]

    def test_a_line_larger_than_max_bytes_is_written_whole_without_an_empty_backup(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=4, backups=2)
        log.write(b"0123456789\n")
        log.write(b"abcdefghij\n")
        assert (tmp_path / "log").read_bytes() == b"abcdefghij\n"
        assert log.backup(1).read_bytes() == b"0123456789\n"
        assert not log.backup(2).exists()

    def test_a_file_removed_by_hand_is_recreated(self, tmp_path):
        log = RotatingLog(tmp_path / "log", max_bytes=100, backups=1)
        log.write(b"aaa\n")
        (tmp_path / "log").unlink()
        log.write(b"bbb\n")
        assert (tmp_path / "log").read_bytes() == b"bbb\n"

    def test_writes_from_many_threads_stay_whole_and_within_max_bytes(self, tmp_path):
        """Without the lock, two threads can both decide there is room and overfill."""
        log = RotatingLog(tmp_path / "log", max_bytes=1000, backups=1000)
        threads, per_thread = 8, 200

        def writer(number: int) -> None:
            for index in range(per_thread):
                log.write(json.dumps({"t": number, "i": index, "pad": "x" * 40}).encode() + b"\n")

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

        files = list(tmp_path.iterdir())
        assert all(f.stat().st_size <= 1000 for f in files)
        records = [record for f in files for record in read_lines(f)]
        assert len(records) == threads * per_thread
        assert {(r["t"], r["i"]) for r in records} == {
            (t, i) for t in range(threads) for i in range(per_thread)
        }


class TestConfig:
    def test_defaults(self):
        config = EventLogConfig()
        assert (config.path, config.max_bytes, config.backups) == ("events.jsonl", 10 * MIB, 5)

    @pytest.mark.parametrize(
        ("setting", "problem"),
        [
            ("max_bytes = 0", "plugins.event_log.max_bytes: input should be greater than 0, got 0"),
            (
                'max_bytes = "10"',
                'plugins.event_log.max_bytes: input should be a valid integer, got "10"',
            ),
            (
                "backups = -1",
                "plugins.event_log.backups: input should be greater than or equal to 0, got -1",
            ),
            (
                'path = ""',
                'plugins.event_log.path: string should have at least 1 character, got ""',
            ),
            (
                "max_byte = 10",
                'plugins.event_log.max_byte: unknown key (did you mean "max_bytes"?)',
            ),
        ],
    )
    async def test_a_bad_setting_is_a_config_error_naming_file_and_key(
        self, frameiod_daemon, tmp_path, setting, problem
    ):
        with pytest.raises(ConfigError) as raised:
            await frameiod_daemon({"event_log": app}, settings=f"[plugins.event_log]\n{setting}\n")
        assert raised.value.problems == [f"{tmp_path / 'config.toml'}: {problem}"]

    async def test_every_bad_setting_is_reported_at_once(self, frameiod_daemon, tmp_path):
        with pytest.raises(ConfigError) as raised:
            await frameiod_daemon(
                {"event_log": app},
                settings="[plugins.event_log]\nmax_bytes = 0\nbackups = -1\nrotate = true\n",
            )
        assert [p.split(": ")[1] for p in raised.value.problems] == [
            "plugins.event_log.max_bytes",
            "plugins.event_log.backups",
            "plugins.event_log.rotate",
        ]


class TestEventLine:
    def test_received_at_is_written_in_utc_whatever_zone_it_is_given(self):
        event = parse_webhook(json.dumps(example_payload("file.ready")).encode(), 1700000000, "e1")
        received = datetime(2025, 1, 2, 6, 5, 6, 789, tzinfo=timezone(timedelta(hours=2)))

        record = json.loads(event_line(event, received))

        assert record["received_at"] == "2025-01-02T04:05:06.000789Z"
        assert (record["event_id"], record["timestamp"]) == ("e1", 1700000000)

    def test_received_at_always_has_microseconds(self):
        event = parse_webhook(json.dumps(example_payload("file.ready")).encode())

        record = json.loads(event_line(event, datetime(2025, 1, 2, tzinfo=UTC)))

        assert record["received_at"] == "2025-01-02T00:00:00.000000Z"
        assert (record["event_id"], record["timestamp"]) == (None, None)
