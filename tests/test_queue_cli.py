"""``frameiod queue ...`` as a user runs it, on a spool the Spool API filled beforehand."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import (
    assert_hostile_text_escaped,
    incoming,
    run_cli,
    write_config,
)

from frameiod.store.base import Incoming
from frameiod.store.sqlite import Spool

DAY = 86400.0
LOG, NOTIFY = "log:write", "notify:post"


Ran = dict[str, "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Filled:
    """A spool with something in every interesting state, and where to find it.

    - ``old``: received 8 days ago; LOG done, NOTIFY dead since 8 days (an old dead letter).
    - ``waiting``: received 2 minutes ago; LOG pending and due (the oldest due pending).
    - ``dead``: received 1 minute ago; NOTIFY dead just now (a young dead letter).
    - ``later``: received 30 s ago; LOG failed once, pending again in an hour.
    """

    config: Path
    db: Path
    old: Incoming
    waiting: Incoming
    dead: Incoming
    later: Incoming
    deliveries: dict[tuple[str, str], int]  # (event id, handler) → delivery id

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``frameiod queue ARGS --config <this config>``."""
        return run_cli("queue", *args, "--config", str(self.config))

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db)) as db:
            return db.execute(sql, args).fetchall()

    def delivery(self, event: Incoming, handler: str) -> tuple[str, int]:
        """(state, attempts) of one delivery."""
        [row] = self.rows(
            "SELECT state, attempts FROM deliveries WHERE id = ?",
            self.deliveries[event.id, handler],
        )
        return row


async def fill(directory: Path) -> Filled:
    """Write a config into ``directory`` and fill its spool through the Spool API."""
    config = write_config(directory)
    db = directory / "frameiod.db"
    now = time.time()
    old = incoming(event_type="file.ready", received_at=now - 8 * DAY)
    waiting = incoming(event_type="comment.created", received_at=now - 120)
    dead = incoming(event_type="file.upload.completed", received_at=now - 60)
    later = incoming(event_type="file.ready", received_at=now - 30)

    spool = await Spool.open(db)
    try:
        await spool.accept(old, [LOG, NOTIFY])
        await spool.accept(waiting, [LOG])
        await spool.accept(dead, [NOTIFY])
        await spool.accept(later, [LOG])
        claimed = await spool.claim(10, {LOG: 10, NOTIFY: 10}, now=now)
        ids = {(c.event_id, c.handler): c.delivery_id for c in claimed}
        assert len(ids) == 5
        await spool.finish(ids[old.id, LOG], outcome="ok", seconds=0.2, error=None)
        await spool.finish(
            ids[old.id, NOTIFY],
            outcome="error",
            seconds=1.0,
            error="HTTPStatusError: 500 from chat",
            dead=True,
        )
        await spool.release([ids[waiting.id, LOG]])
        await spool.finish(
            ids[dead.id, NOTIFY],
            outcome="timeout",
            seconds=10.0,
            error="TimeoutError: no answer in 10s",
            dead=True,
        )
        await spool.finish(
            ids[later.id, LOG],
            outcome="error",
            seconds=0.5,
            error="OSError: disk busy",
            next_attempt_at=now + 3600,
        )
        # The old dead letter was buried 8 days ago.
        await spool.run(
            lambda c: c.execute(
                "UPDATE deliveries SET updated_at = ? WHERE id = ?",
                (now - 8 * DAY, ids[old.id, NOTIFY]),
            )
        )
    finally:
        await spool.close()
    return Filled(config, db, old, waiting, dead, later, ids)


@pytest.fixture
async def filled(tmp_path: Path) -> Filled:
    """A filled spool of this test's own, for commands that change it."""
    return await fill(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """One filled spool for every command that only reads."""
    return asyncio.run(fill(tmp_path_factory.mktemp("shared")))


@dataclass(frozen=True)
class Elsewhere:
    """Configs whose spool is not the shared one."""

    missing: Path  # a folder with a config and no spool
    garbage: Path  # a folder whose frameiod.db is not SQLite
    hashed: Path  # a filled spool in a folder with "#" in its name


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Elsewhere:
    missing = tmp_path_factory.mktemp("missing")
    write_config(missing)
    garbage = tmp_path_factory.mktemp("garbage")
    write_config(garbage)
    (garbage / "frameiod.db").write_bytes(b"definitely not sqlite" * 200)
    hashed = tmp_path_factory.mktemp("spool#")
    asyncio.run(fill(hashed))
    return Elsewhere(missing, garbage, hashed)


@pytest.fixture(scope="module")
def ran(shared: Filled, elsewhere: Elsewhere) -> Ran:
    """The read-only commands, each run once and all at the same time (they only read, and
    a subprocess spends most of its life importing): name → CompletedProcess."""
    commands: dict[str, list[str]] = {
        "stats --json": ["stats", "--json"],
        "stats": ["stats"],
        "list dead --json": ["list", "--state", "dead", "--json"],
        "list handler --json": ["list", "--handler", LOG, "--json"],
        "list limit --json": ["list", "--limit", "2", "--json"],
        "list dead": ["list", "--state", "dead"],
        "list running": ["list", "--state", "running"],
        "show --json": ["show", shared.old.id, "--json"],
        "show unknown": ["show", "no-such-event"],
        "replay": ["replay"],
        "purge bogus": ["purge", "--dead", "--older-than", "bogus"],
    }
    argvs = {
        name: ["queue", *args, "--config", str(shared.config)] for name, args in commands.items()
    }
    for name, folder, args in [
        ("missing", elsewhere.missing, ["stats"]),
        ("garbage", elsewhere.garbage, ["list"]),
        ("hashed", elsewhere.hashed, ["stats", "--json"]),
    ]:
        argvs[name] = ["queue", *args, "--config", str(folder / "config.toml")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, *argv) for name, argv in argvs.items()}
    return {name: future.result() for name, future in futures.items()}


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestStats:
    def test_json_counts_per_state_and_handler_and_the_oldest_due_pending(self, ran: Ran):
        data = _json(ran["stats --json"])
        age = data.pop("oldest_pending_seconds")
        assert data == {
            "events": 4,
            "deliveries": {"pending": 2, "running": 0, "done": 1, "dead": 2},
            "handlers": {
                LOG: {"pending": 2, "running": 0, "done": 1, "dead": 0},
                NOTIFY: {"pending": 0, "running": 0, "done": 0, "dead": 2},
            },
        }
        # "waiting" has been due for 2 minutes; "later" is not due, so it does not count.
        assert 120 <= age < 150

    def test_text_shows_the_same_numbers(self, ran: Ran):
        result = ran["stats"]
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["events      4", "deliveries  pending 2, running 0, done 1, dead 2"]
        assert re.fullmatch(r"oldest due pending  1[2-4]\d\.\ds", lines[2]), lines[2]
        assert lines[3:] == [f"  {LOG}: pending 2, done 1", f"  {NOTIFY}: dead 2"]


class TestList:
    def test_dead_letters_with_their_last_error(self, ran: Ran, shared: Filled):
        rows = _json(ran["list dead --json"])
        assert [
            (r["event_id"], r["type"], r["handler"], r["attempts"], r["last_error"]) for r in rows
        ] == [
            (shared.dead.id, "file.upload.completed", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (shared.old.id, "file.ready", NOTIFY, 1, "HTTPStatusError: 500 from chat"),
        ]

    def test_one_handler_newest_first(self, ran: Ran, shared: Filled):
        rows = _json(ran["list handler --json"])
        assert [(r["event_id"], r["state"]) for r in rows] == [
            (shared.later.id, "pending"),
            (shared.waiting.id, "pending"),
            (shared.old.id, "done"),
        ]

    def test_limit_keeps_the_newest(self, ran: Ran, shared: Filled):
        rows = _json(ran["list limit --json"])
        assert [(r["event_id"], r["handler"]) for r in rows] == [
            (shared.later.id, LOG),
            (shared.dead.id, NOTIFY),
        ]

    def test_text_shows_handler_state_and_error(self, ran: Ran, shared: Filled):
        result = ran["list dead"]
        assert result.returncode == 0, result.stderr
        header, *lines = result.stdout.splitlines()
        assert header.split()[:6] == ["DELIVERY", "EVENT", "TYPE", "HANDLER", "STATE", "TRIES"]
        assert [line.split(maxsplit=6) for line in lines] == [
            [
                str(shared.deliveries[shared.dead.id, NOTIFY]),
                shared.dead.id,
                "file.upload.completed",
                NOTIFY,
                "dead",
                "1",
                "TimeoutError: no answer in 10s",
            ],
            [
                str(shared.deliveries[shared.old.id, NOTIFY]),
                shared.old.id,
                "file.ready",
                NOTIFY,
                "dead",
                "1",
                "HTTPStatusError: 500 from chat",
            ],
        ]

    def test_nothing_to_list_is_said_so(self, ran: Ran):
        result = ran["list running"]
        assert (result.returncode, result.stdout) == (0, "no deliveries\n")


class TestShow:
    def test_an_event_with_its_payload_and_deliveries(self, ran: Ran, shared: Filled):
        data = _json(ran["show --json"])
        assert (data["id"], data["source"], data["type"], data["timestamp"]) == (
            shared.old.id,
            "default",
            "file.ready",
            shared.old.timestamp,
        )
        assert data["payload"] == json.loads(shared.old.body)
        assert [
            (d["handler"], d["state"], d["attempts"], d["last_outcome"], d["last_error"])
            for d in data["deliveries"]
        ] == [
            (LOG, "done", 1, "ok", None),
            (NOTIFY, "dead", 1, "error", "HTTPStatusError: 500 from chat"),
        ]

    def test_an_unknown_event_is_an_error(self, ran: Ran, shared: Filled):
        result = ran["show unknown"]
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == f"no event no-such-event in {shared.db}"


class TestReplay:
    def test_an_event_id_replays_its_dead_deliveries_only(self, filled: Filled):
        result = filled.queue("replay", filled.old.id)
        assert (result.returncode, result.stdout) == (0, "replayed 1 deliveries\n")
        assert filled.delivery(filled.old, NOTIFY) == ("pending", 0)
        assert filled.delivery(filled.old, LOG) == ("done", 1)
        assert filled.delivery(filled.dead, NOTIFY) == ("dead", 1)
        [(due,)] = filled.rows(
            "SELECT next_attempt_at FROM deliveries WHERE id = ?",
            filled.deliveries[filled.old.id, NOTIFY],
        )
        assert due == pytest.approx(time.time(), abs=30), "a replay is due now"

    def test_a_delivery_id_replays_that_delivery(self, filled: Filled):
        delivery = filled.deliveries[filled.dead.id, NOTIFY]
        data = _json(filled.queue("replay", str(delivery), "--json"))
        assert data == {"replayed": 1}
        assert filled.delivery(filled.dead, NOTIFY) == ("pending", 0)
        assert filled.delivery(filled.old, NOTIFY) == ("dead", 1)

    def test_all_dead_replays_every_dead_letter(self, filled: Filled):
        result = filled.queue("replay", "--all-dead")
        assert (result.returncode, result.stdout) == (0, "replayed 2 deliveries\n")
        assert filled.rows("SELECT state, attempts, COUNT(*) FROM deliveries GROUP BY 1, 2") == [
            ("done", 1, 1),
            ("pending", 0, 2),
            ("pending", 1, 2),
        ]

    def test_nothing_named_is_a_usage_error(self, ran: Ran, shared: Filled):
        result = ran["replay"]
        assert result.returncode == 2
        assert result.stderr == "name event or delivery ids to replay, or --all-dead\n"
        assert shared.rows("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'") == [(2,)]


class TestPurge:
    def test_older_than_keeps_young_dead_letters(self, filled: Filled):
        result = filled.queue("purge", "--dead", "--older-than", "7d")
        assert (result.returncode, result.stdout) == (0, "purged 1 dead deliveries\n")
        assert filled.rows("SELECT event_id, handler FROM deliveries WHERE state = 'dead'") == [
            (filled.dead.id, NOTIFY)
        ]
        # The old event still has its done delivery: it stays (purge_done takes it later).
        assert filled.delivery(filled.old, LOG) == ("done", 1)

    def test_zero_removes_every_dead_letter_and_the_events_left_empty(self, filled: Filled):
        data = _json(filled.queue("purge", "--dead", "--older-than", "0s", "--json"))
        assert data == {"purged": 2}
        assert filled.rows("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'") == [(0,)]
        assert {row[0] for row in filled.rows("SELECT id FROM events")} == {
            filled.old.id,
            filled.waiting.id,
            filled.later.id,
        }

    def test_a_bad_duration_is_a_usage_error(self, ran: Ran, shared: Filled):
        result = ran["purge bogus"]
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(
            'argument --older-than: expected a duration like "12h" or "7d", got \'bogus\''
        )
        assert shared.rows("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'") == [(2,)]


class TestSpoolFile:
    def test_a_missing_spool_is_reported_not_created(self, ran: Ran, elsewhere: Elsewhere):
        result = ran["missing"]
        db = elsewhere.missing / "frameiod.db"
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"no spool at {db} (frameiod creates it on its first run)\n"
        assert not db.exists()

    def test_a_file_that_is_not_a_spool_is_one_line_of_error(self, ran: Ran, elsewhere: Elsewhere):
        result = ran["garbage"]
        db = elsewhere.garbage / "frameiod.db"
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"{db}: cannot use the spool: file is not a database\n"

    def test_a_folder_name_with_a_hash_is_not_cut_short(self, ran: Ran, elsewhere: Elsewhere):
        data = _json(ran["hashed"])
        assert data["deliveries"] == {"pending": 2, "running": 0, "done": 1, "dead": 2}
        # Cut at the "#", the path would have named (and SQLite created) a sibling file.
        folder = elsewhere.hashed
        assert not (folder.parent / folder.name.split("#")[0]).exists()


class TestWhileTheDaemonHoldsTheSpool:
    async def test_reads_go_through_a_write_in_progress_and_replays_reach_the_daemon(
        self, filled: Filled
    ):
        spool = await Spool.open(filled.db)
        entered, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            # The writer sits inside an open write transaction, as in the middle of a batch.
            conn.execute("UPDATE events SET type = type WHERE id = ?", (filled.old.id,))
            entered.set()
            release.wait(10)

        held = spool.run(hold)
        try:
            await asyncio.to_thread(entered.wait, 10)
            stats = await asyncio.to_thread(filled.queue, "stats", "--json")
        finally:
            release.set()
            await held
        try:
            assert _json(stats)["deliveries"]["dead"] == 2

            replayed = await asyncio.to_thread(filled.queue, "replay", "--all-dead")
            assert replayed.stdout == "replayed 2 deliveries\n", replayed.stderr
            claimed = await spool.claim(10, {NOTIFY: 10})
        finally:
            await spool.close()
        assert sorted((c.event_id, c.attempts) for c in claimed) == sorted(
            [(filled.old.id, 1), (filled.dead.id, 1)]
        )


class TestHostileText:
    async def test_a_type_and_an_error_from_outside_are_shown_escaped(self, tmp_path: Path):
        config = write_config(tmp_path)
        await assert_hostile_text_escaped(await Spool.open(tmp_path / "frameiod.db"), config)
