"""``frameiod queue ...`` as a user runs it, on a spool the Spool API filled beforehand."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import (
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
def ran(elsewhere: Elsewhere) -> Ran:
    """The read-only commands, each run once and all at the same time (they only read, and
    a subprocess spends most of its life importing): name → CompletedProcess."""
    argvs: dict[str, list[str]] = {}
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
