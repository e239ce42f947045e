"""The daemon's files, through the real daemon: it adopts no other application's database,
names a permission problem for what it is, keeps raw bodies from other users, and
remembers a signed request as long as it could be replayed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_support import RedisServer, redis_spool_lines
from support import (
    FRAMEIOD,
    JSON_LOG,
    SECRET,
    DaemonProcess,
    event_body,
    incoming,
    install_plugin,
    wait_until,
    write_config,
)
from support import signed_headers as sign_headers

from frameiod.signature import SIGNATURE_HEADER
from frameiod.store.sqlite import Spool
from frameiod.testing import config_toml

APPLICATION_ID = int.from_bytes(b"fiod", "big")  # written out: the test runs against older code too

# The daemon's umask in the tests that need one: the usual default, which made files 0644.
UMASK_022 = ["sh", "-c", 'umask 022 && exec "$0" "$@"', *FRAMEIOD]

OK_HANDLER = """
from frameiod import App

app = App()


@app.on_webhook("*")
def ok(event):
    pass
"""


def _config(folder: Path, spool: Path, *, extra: str = "", tolerance: str = "5m") -> Path:
    """A readable config with the spool at ``spool``; ``extra`` is more TOML after it."""
    text = config_toml(
        secret=SECRET,
        log=JSON_LOG,
        spool=f'path = "{spool}"\n{extra}',
        source=f'tolerance = "{tolerance}"',
    )
    path = write_config(folder, text)
    path.chmod(0o644)
    return path


def _start_error(daemon: DaemonProcess) -> str:
    """The daemon's reason for refusing to start; it must have exited with status 1."""
    try:
        assert daemon.wait() == 1, "".join(daemon.raw)
    finally:
        daemon.kill()  # one that started after all must not outlive the test
    return str(daemon.wait_for("cannot open the spool")["error"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}


def _spool_with_pending_event(path: Path) -> str:
    """Make a frameiod spool at ``path`` holding one pending delivery; its event id."""
    event = incoming()

    async def fill() -> None:
        spool = await Spool.open(path)
        try:
            await spool.accept(event, ["some.handler"])
        finally:
            await spool.close()

    asyncio.run(fill())
    return event.id


def _pending(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT event_id, state FROM deliveries").fetchall()


class TestAnotherApplicationsDatabase:
    def test_start_up_stops_naming_the_file_and_the_file_is_left_untouched(self, tmp_path: Path):
        other = tmp_path / "other.db"
        with closing(sqlite3.connect(other)) as db:
            db.execute("CREATE TABLE foo (x TEXT)")
            db.execute("INSERT INTO foo VALUES ('theirs')")
            db.commit()
        before = other.read_bytes()

        daemon = DaemonProcess(_config(tmp_path, other))
        error = _start_error(daemon)

        assert error.startswith(f"{other}: ")
        assert "not a frameiod spool" in error
        assert other.read_bytes() == before, "frameiod must not write to another file"
        assert _tables(other) == {"foo"}
        assert not daemon.logs("listening")

    def test_a_spool_of_an_older_frameiod_without_the_mark_opens_and_is_marked(
        self, tmp_path: Path
    ):
        path = tmp_path / "spool.db"
        event_id = _spool_with_pending_event(path)
        with closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA application_id = 0")  # as frameiod wrote it before the mark
            db.commit()

        daemon = DaemonProcess(_config(tmp_path, path))
        try:
            # `frameiod run` gives the spool its event loop's hand-over, and says so.
            daemon.wait_for("listening", handover="loop idle")
            daemon.wait_for("spool marked as frameiod's", spool=str(path))
        finally:
            assert daemon.stop() == 0
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert _pending(path) == [(event_id, "pending")]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder every user can reach (pytest's own are the owner's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="frameiod-perm-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


NOBODY = 65534


def _nobody_can_run_python() -> bool:
    """Whether this interpreter starts as nobody: one built with its libpython under a
    private home (pyenv's under /root) does not, and those tests cannot run with it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    probe = subprocess.run(
        [*as_nobody, sys.executable, "-c", "import frameiod"],
        capture_output=True,
        check=False,
        cwd="/",
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _nobody_can_run_python(),
    reason="runs frameiod as another user (nobody): needs root, setpriv, and a Python that "
    "nobody can start",
)
class TestReadOnlySpool:
    """frameiod runs as ``nobody``: as root, permission bits would not stop it."""

    AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")

    def _refusal(self, shared: Path, spool: Path) -> str:
        daemon = DaemonProcess(_config(shared, spool), frameiod=[*self.AS_NOBODY, *FRAMEIOD])
        error = _start_error(daemon)
        assert "nobody" in error, error
        assert "do not move the spool aside" in error
        assert "not a frameiod spool or it is damaged" not in error
        return error

    def test_a_read_only_file_is_named_with_the_user_and_how_to_fix_it(self, shared: Path):
        folder = shared / "state"
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
        spool = folder / "spool.db"
        event_id = _spool_with_pending_event(spool)
        spool.chmod(0o644)  # root's file: nobody may read it, not write it

        error = self._refusal(shared, spool)

        assert error.startswith(f"{spool}: the spool is read-only for user nobody")
        assert "owner root, mode 0644" in error
        assert f"chown nobody {spool}" in error
        assert _pending(spool) == [(event_id, "pending")]

    def test_a_read_only_folder_is_named_since_the_wal_cannot_be_created_there(self, shared: Path):
        folder = shared / "state"
        folder.mkdir(mode=0o755)  # root's: nobody cannot create spool.db-wal in it
        spool = folder / "spool.db"
        event_id = _spool_with_pending_event(spool)
        os.chown(spool, NOBODY, NOBODY)

        error = self._refusal(shared, spool)

        assert error.startswith(f"{folder}: the spool's directory is not writable by user nobody")
        assert "spool.db-wal" in error
        assert f"chown nobody {folder}" in error
        assert _pending(spool) == [(event_id, "pending")]

    def test_a_file_of_another_user_without_permission_is_named(self, shared: Path):
        folder = shared / "state"
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
        spool = folder / "spool.db"
        event_id = _spool_with_pending_event(spool)
        spool.chmod(0o600)

        error = self._refusal(shared, spool)

        assert error.startswith(f"{spool}: the spool is read-only for user nobody")
        assert "owner root, mode 0600" in error
        assert _pending(spool) == [(event_id, "pending")]


class TestOwnerOnlyFiles:
    def _send(self, daemon: DaemonProcess) -> httpx.Response:
        body = event_body()
        return httpx.post(daemon.url(), content=body, headers=sign_headers(body), timeout=5)

    def test_a_new_spool_and_event_log_are_readable_by_the_owner_only_under_umask_022(
        self, tmp_path: Path
    ):
        spool = tmp_path / "spool.db"
        log = tmp_path / "events.jsonl"
        config = _config(tmp_path, spool, extra=f'[plugins.event_log]\npath = "{log}"\n')
        daemon = DaemonProcess(config, frameiod=UMASK_022, plugins="event_log")
        try:
            assert self._send(daemon).status_code == 202
            daemon.wait_for("handler finished")
            files = [spool, spool.with_name("spool.db-wal"), spool.with_name("spool.db-shm"), log]
            assert {file.name: _mode(file) for file in files} == {
                file.name: 0o600 for file in files
            }
            assert log.read_text().count("\n") == 1
        finally:
            assert daemon.stop() == 0

    def test_existing_files_readable_by_others_are_tightened_at_start_and_logged(
        self, tmp_path: Path
    ):
        spool = tmp_path / "spool.db"
        _spool_with_pending_event(spool)
        log = tmp_path / "events.jsonl"
        log.write_text("")
        backup = tmp_path / "events.jsonl.1"
        backup.write_text("")
        for file in (spool, log, backup):
            file.chmod(0o644)
        config = _config(tmp_path, spool, extra=f'[plugins.event_log]\npath = "{log}"\n')

        daemon = DaemonProcess(config, frameiod=UMASK_022, plugins="event_log")
        try:
            daemon.wait_for("listening")
        finally:
            assert daemon.stop() == 0

        assert {_mode(file) for file in (spool, log, backup)} == {0o600}
        said = daemon.wait_for("spool file made readable by its owner only", file=str(spool))
        assert (said["mode_was"], said["mode"]) == ("0644", "0600")
        tightened = {
            line["file"]: line["mode_was"]
            for line in daemon.logs("event log file made readable by its owner only")
        }
        assert tightened == {str(log): "0644", str(backup): "0644"}


def _gauge(daemon: DaemonProcess, state: str) -> float:
    text = httpx.get(daemon.url("/metrics"), timeout=5).text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "frameiod_spool_deliveries" and sample.labels["state"] == state
    )


def _post(daemon: DaemonProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(daemon.url(), content=body, headers=headers, timeout=5)


class TestReplayAfterRetention:
    def test_a_replay_inside_the_tolerance_is_a_duplicate_though_keep_done_has_passed(
        self, tmp_path: Path
    ):
        env = install_plugin(tmp_path / "site", "ok", OK_HANDLER)
        config = _config(tmp_path, tmp_path / "spool.db", extra='keep_done = "1ms"')
        daemon = DaemonProcess(config, env=env, plugins="ok")
        try:
            body = event_body()
            headers = sign_headers(body)
            first = _post(daemon, body, headers)
            assert first.status_code == 202
            daemon.wait_for("handler finished")
            # The maintenance round after the call purges what keep_done lets go (before it
            # refreshes the gauges): a done delivery counted means the event was kept.
            try:
                wait_for_gauge(daemon, "done", 1.0)
            except AssertionError:
                pytest.fail("the event was purged while its request could still be replayed")

            again = _post(daemon, body, headers)

            assert again.status_code == 200, again.text
            assert again.json()["id"] == first.json()["id"]
        finally:
            assert daemon.stop() == 0


GATED_HANDLER = """
import asyncio
import os
from pathlib import Path

from frameiod import App

app = App()


@app.on_webhook("*")
async def gated(event):
    # The gate event holds the only worker until the test opens the gate: what arrives
    # meanwhile waits with no delivery started.
    if event.type == "file.created":
        gate = Path(os.environ["FRAMEIOD_TEST_GATE"])
        while not gate.exists():
            await asyncio.sleep(0.01)
"""


def _states(spool: Path) -> list[tuple[str, str]]:
    """Every delivery in the spool file as (event id, state), as another reader sees it."""
    with closing(sqlite3.connect(spool)) as db:
        return sorted(db.execute("SELECT event_id, state FROM deliveries"))


class TestReplayOfACoalescedRequest:
    def test_a_coalesced_request_replayed_after_its_event_ran_is_a_duplicate(self, tmp_path: Path):
        gate = tmp_path / "gate"
        env = {
            **install_plugin(tmp_path / "site", "gated", GATED_HANDLER),
            "FRAMEIOD_TEST_GATE": str(gate),
        }
        spool = tmp_path / "spool.db"
        config = _config(tmp_path, spool, extra="[dispatch]\nworkers = 1")
        daemon = DaemonProcess(config, env=env, plugins="gated")
        try:
            gated = event_body("file.created")
            blocker = _post(daemon, gated, sign_headers(gated))
            assert blocker.status_code == 202, blocker.text
            wait_until(lambda: _states(spool) == [(blocker.json()["id"], "running")])
            body = event_body()
            now = int(time.time())
            first = _post(daemon, body, sign_headers(body, timestamp=now - 1))
            assert first.status_code == 202, first.text
            # The same body signed again: its event has not started, so it is coalesced.
            coalesced = sign_headers(body, timestamp=now)
            joined = _post(daemon, body, coalesced)
            assert joined.status_code == 200, joined.text
            assert joined.json() == {"status": "duplicate", "id": first.json()["id"]}
            gate.touch()
            daemon.wait_for("handler finished", event_id=first.json()["id"])

            replay = _post(daemon, body, coalesced)

            assert replay.status_code == 200, replay.text
            assert replay.json() == {"status": "duplicate", "id": first.json()["id"]}
            # No event was added for the replay, so no handler runs again.
            assert _states(spool) == sorted(
                [(blocker.json()["id"], "done"), (first.json()["id"], "done")]
            )
        finally:
            assert daemon.stop() == 0
        assert len(daemon.logs("handler finished")) == 2


def wait_for_gauge(daemon: DaemonProcess, state: str, value: float, timeout: float = 15) -> None:
    """Wait until ``frameiod_spool_deliveries{state}`` reads ``value`` (refreshed every 5 s)."""
    wait_until(lambda: _gauge(daemon, state) == value, timeout)


class TestReplayOnRedisAfterAReload:
    def test_a_reload_widening_the_tolerance_widens_the_record_of_seen_requests(
        self, tmp_path: Path, redis_server: RedisServer
    ):
        prefix = f"t{uuid.uuid4().hex[:8]}"
        env = install_plugin(tmp_path / "site", "ok", OK_HANDLER)
        spool = redis_spool_lines(redis_server.url, prefix)
        config = _config(
            tmp_path, tmp_path / "unused.db", extra=f'keep_done = "1ms"\n{spool}', tolerance="10s"
        )
        daemon = DaemonProcess(config, env=env, plugins="ok")
        try:
            daemon.wait_for("listening")
            _config(
                tmp_path,
                tmp_path / "unused.db",
                extra=f'keep_done = "1ms"\n{spool}',
                tolerance="30m",
            )
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for("config reloaded")
            # Signed a minute ago: refused under the old 10 seconds, accepted under 30 minutes.
            timestamp = int(time.time()) - 60
            body = event_body()
            headers = sign_headers(body, timestamp=timestamp)
            first = _post(daemon, body, headers)
            assert first.status_code == 202, first.text
            daemon.wait_for("handler finished")
            client = redis.Redis.from_url(redis_server.url)
            # keep_done has passed: a maintenance round deletes the event (not its record).
            wait_until(lambda: not client.exists(f"{prefix}:event:{first.json()['id']}"), 15)

            seen = f"{prefix}:seen:default:{timestamp}:{headers[SIGNATURE_HEADER]}"
            ttl = client.ttl(seen)
            # Valid until its timestamp is 30 minutes old: the record must last that long.
            assert ttl == -1 or ttl >= timestamp + 1800 - time.time(), ttl
            again = _post(daemon, body, headers)
            assert again.status_code == 200, again.text
            assert again.json()["id"] == first.json()["id"]
        finally:
            assert daemon.stop() == 0
