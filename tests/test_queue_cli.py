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


class TestReplayAndPurgeByIds:
    async def test_unknown_and_refused_ids_are_named_and_the_exit_status_is_1(self, filled: Filled):
        done = str(filled.deliveries[filled.old.id, LOG])
        result = await asyncio.to_thread(
            filled.queue, "replay", filled.dead.id, done, "no-such-event"
        )
        # The dead one was replayed all the same.
        assert (result.returncode, result.stdout) == (1, "replayed 1 delivery\n")
        assert result.stderr.splitlines() == [
            f"{done}: done: its handler succeeded; only dead deliveries are replayed",
            "no-such-event: no such delivery or event",
        ]

    async def test_every_id_replayed_is_exit_status_0(self, filled: Filled):
        result = await asyncio.to_thread(filled.queue, "replay", filled.dead.id, filled.old.id)
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            "replayed 2 deliveries\n",
            "",
        )

    async def test_purge_takes_ids_and_names_those_it_did_not_purge(self, filled: Filled):
        dead = str(filled.deliveries[filled.dead.id, NOTIFY])
        result = await asyncio.to_thread(filled.queue, "purge", dead, filled.waiting.id, "42424")
        assert (result.returncode, result.stdout) == (1, "purged 1 dead delivery\n")
        assert result.stderr.splitlines() == [
            f"{filled.waiting.id}: pending: it is waiting for its next attempt; "
            "only dead deliveries are purged",
            "42424: no such delivery or event",
        ]
        again = await asyncio.to_thread(filled.queue, "purge", dead, "--json")
        assert again.returncode == 1
        assert json.loads(again.stdout) == {"purged": 0, "unknown": [dead]}

    @pytest.mark.parametrize(
        "args", [(), ("--older-than", "1d"), ("123", "--dead"), ("123", "--older-than", "1d")]
    )
    async def test_purge_wants_ids_or_dead(self, filled: Filled, args: tuple[str, ...]):
        result = await asyncio.to_thread(filled.queue, "purge", *args)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == "name event or delivery ids to purge, or --dead [--older-than]\n"


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _fields(text: str) -> dict[str, str]:
    """The ``label   value`` lines of ``queue show``'s text (labels of one or two words)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+(?: \w+)?) {2,}(\S.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


class TestShow:
    async def test_an_event_is_shown_as_fields_with_iso_times_and_its_payload_indented(
        self, filled: Filled
    ):
        result = await asyncio.to_thread(filled.queue, "show", filled.old.id)
        assert result.returncode == 0, result.stderr
        fields = _fields(result.stdout)
        assert fields["event"] == filled.old.id
        assert fields["type"] == "file.ready"
        assert fields["source"] == "default"
        received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(filled.old.received_at))
        assert fields["received at"] == received
        assert ISO.fullmatch(fields["signed at"])
        lines = result.stdout.splitlines()
        notify = next(line for line in lines if f"  {NOTIFY}  " in line)
        assert "dead" in notify
        assert "1 attempt" in notify
        assert notify.endswith(": HTTPStatusError: 500 from chat")
        assert lines[lines.index("deliveries") + 2] == notify
        payload = lines[lines.index("payload") + 1 :]
        assert "\n".join(payload) == "\n".join(
            "  " + line for line in json.dumps(json.loads(filled.old.body), indent=2).splitlines()
        )
        # No raw epoch seconds anywhere.
        assert not re.search(r"\b1\d{9}(\.\d+)?\b", result.stdout)

    async def test_one_delivery_is_shown_with_its_last_attempt_and_its_event(self, filled: Filled):
        delivery = str(filled.deliveries[filled.later.id, LOG])
        result = await asyncio.to_thread(filled.queue, "show", delivery)
        assert result.returncode == 0, result.stderr
        fields = _fields(result.stdout)
        assert (fields["delivery"], fields["handler"], fields["state"]) == (
            delivery,
            LOG,
            "pending",
        )
        assert fields["attempts"] == "1"
        assert ISO.fullmatch(fields["next attempt"])
        assert re.fullmatch(r"error after 0\.50s at " + ISO.pattern, fields["last attempt"])
        assert fields["last error"] == "OSError: disk busy"
        assert fields["event"] == filled.later.id
        assert '    "type": "file.ready",' in result.stdout.splitlines()

    async def test_json_is_printed_only_with_json(self, filled: Filled):
        text, data = await asyncio.gather(
            asyncio.to_thread(filled.queue, "show", filled.old.id),
            asyncio.to_thread(filled.queue, "show", filled.old.id, "--json"),
        )
        assert not text.stdout.startswith("{")
        assert json.loads(data.stdout)["id"] == filled.old.id


class TestList:
    async def test_what_is_cut_ends_with_an_ellipsis(self, tmp_path: Path):
        config = write_config(tmp_path)
        error = "ValueError: " + "x" * 80
        kind = "file.versioned.and.renamed.twice"
        handler = "a_plugin_with_a_long_name:its_handler"
        spool = await Spool.open(tmp_path / "frameiod.db")
        try:
            event = incoming(event_type=kind)
            await spool.accept(event, [handler])
            [claimed] = await spool.claim(10, {handler: 10})
            await spool.finish(claimed.delivery_id, outcome="error", seconds=0.1, error=error,
                               dead=True)  # fmt: skip
        finally:
            await spool.close()
        result = await asyncio.to_thread(run_cli, "queue", "list", "--config", str(config))
        assert result.returncode == 0, result.stderr
        row = result.stdout.splitlines()[1]
        assert f"  {kind[:21]}…  " in row
        assert f"  {handler[:27]}…  " in row
        assert row.endswith(f"  {error[:59]}…")
