"""Nothing acknowledged is lost: SIGKILL mid-stream, SIGTERM with work in flight."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
from support import (
    JSON_LOG,
    SECRET,
    DaemonProcess,
    config_toml,
    install_plugin,
    signed_headers,
    wait_until,
    write_config,
)

RECORDER = """
import os
import time

from frameiod import App

app = App()
LOG = os.environ["RECORDER_LOG"]
DELAY = float(os.environ.get("RECORDER_DELAY", "0"))


def _write(line):
    # One short O_APPEND write per line: whole lines, even from several threads.
    with open(LOG, "a") as log:
        log.write(line + "\\n")


@app.on_webhook("*")
def record(event):
    _write("start " + event.event_id)
    time.sleep(DELAY)
    _write("end " + event.event_id)
"""


def _handled(log: Path, kind: str = "end") -> list[str]:
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith(kind)]


class Sender:
    """Sends distinct signed events like Frame.io does: retrying until a 2xx, bounded."""

    def __init__(self, total: int, threads: int = 4) -> None:
        self.url = ""
        self.acked: dict[str, str] = {}  # event id -> resource id
        self.duplicates = 0
        self.total = total
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n, threads), daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "the sender did not finish in time"

    def _run(self, offset: int, step: int) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            for number in range(offset, self.total, step):
                resource = f"r-{number}-{uuid.uuid4()}"
                body = json.dumps(
                    {"type": "file.ready", "resource": {"id": resource, "type": "file"}}
                ).encode()
                while time.monotonic() < deadline:
                    try:
                        response = client.post(self.url, content=body, headers=signed_headers(body))
                    except httpx.HTTPError:
                        time.sleep(0.02)  # the daemon is down: Frame.io would retry later
                        continue
                    if response.is_success:
                        with self._lock:
                            self.acked[response.json()["id"]] = resource
                            self.duplicates += response.status_code == 200
                        break
                    time.sleep(0.02)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.acked)


def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path):
    """Three SIGKILLs while 300 events stream in; every 2xx'd event is handled in the end."""
    log = tmp_path / "handled.log"
    env = {**install_plugin(tmp_path / "site", "recorder", RECORDER), "RECORDER_LOG": str(log)}
    config = write_config(tmp_path, config_toml(secret=SECRET, log=JSON_LOG))
    sender = Sender(total=300)

    daemon = DaemonProcess(config, env=env, plugins="recorder")
    sender.url = daemon.url()
    sender.start()
    kills = 0
    try:
        for threshold in (60, 140, 220):
            wait_until(lambda threshold=threshold: sender.count >= threshold, timeout=60)
            daemon.process.send_signal(signal.SIGKILL)
            daemon.wait()
            kills += 1
            daemon = DaemonProcess(config, env=env, plugins="recorder")
            sender.url = daemon.url()
        sender.join(timeout=90)
        wait_until(lambda: set(sender.acked) <= set(_handled(log)), timeout=60)
    finally:
        assert daemon.stop() == 0
    handled = _handled(log)
    lost = set(sender.acked) - set(handled)
    repeated = len(handled) - len(set(handled))
    print(
        f"\nacknowledged {len(sender.acked)}, lost {len(lost)}, handled twice {repeated}, "
        f"answered duplicate {sender.duplicates}, kills {kills}"
    )
    assert kills == 3
    assert len(sender.acked) == 300
    assert lost == set()


def test_sigterm_lets_running_calls_finish_and_keeps_the_rest_for_the_next_start(
    tmp_path: Path,
):
    log = tmp_path / "handled.log"
    env = {
        **install_plugin(tmp_path / "site", "recorder", RECORDER),
        "RECORDER_LOG": str(log),
        "RECORDER_DELAY": "0.5",
    }
    dispatch = 'workers = 2\ndrain_timeout = "10s"'
    config = write_config(tmp_path, config_toml(secret=SECRET, log=JSON_LOG, dispatch=dispatch))
    daemon = DaemonProcess(config, env=env, plugins="recorder")
    try:
        ids = []
        with httpx.Client(timeout=5) as client:
            for number in range(6):
                body = json.dumps({"type": "file.ready", "resource": {"id": f"r{number}"}})
                response = client.post(
                    daemon.url(), content=body.encode(), headers=signed_headers(body.encode())
                )
                assert response.status_code == 202
                ids.append(response.json()["id"])
        wait_until(lambda: len(_handled(log, "start")) >= 2)
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        stopped_in = time.monotonic() - started
    finally:
        daemon.kill()
    begun, finished = _handled(log, "start"), _handled(log, "end")
    assert set(begun) == set(finished), "a running call was cut short"
    assert stopped_in < 10  # well inside the drain timeout: nothing waited for it
    assert len(finished) < 6  # the rest was left in the spool, not rushed through

    daemon = DaemonProcess(config, env=env, plugins="recorder")
    try:
        wait_until(lambda: set(ids) <= set(_handled(log)), timeout=30)
    finally:
        assert daemon.stop() == 0
    assert sorted(set(_handled(log))) == sorted(ids)


def test_a_second_daemon_on_the_same_spool_is_refused_and_no_call_repeats(tmp_path: Path):
    """The second would take the first one's running call for a crash's leftover and put it
    back to pending, and the first would call its handler again while the call still ran."""
    log = tmp_path / "handled.log"
    env = {
        **install_plugin(tmp_path / "site", "recorder", RECORDER),
        "RECORDER_LOG": str(log),
        "RECORDER_DELAY": "3",
    }
    spool = f'path = "{tmp_path / "shared" / "frameiod.db"}"'
    first_config = write_config(
        tmp_path / "first", config_toml(secret=SECRET, log=JSON_LOG, spool=spool)
    )
    second_config = write_config(
        tmp_path / "second", config_toml(secret=SECRET, log=JSON_LOG, spool=spool)
    )
    first = DaemonProcess(first_config, env=env, plugins="recorder")
    second = None
    try:
        body = json.dumps({"type": "file.ready", "resource": {"id": "r1"}}).encode()
        response = httpx.post(first.url(), content=body, headers=signed_headers(body), timeout=5)
        assert response.status_code == 202
        event_id = response.json()["id"]
        wait_until(lambda: _handled(log, "start") == [event_id])
        second = DaemonProcess(second_config, env=env, plugins="recorder")
        assert second.wait(timeout=15) == 1
        said = "".join(second.raw)
        assert f"the spool is in use by another frameiod (pid {first.process.pid})" in said
        wait_until(lambda: _handled(log) == [event_id])
        assert first.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert _handled(log, "start") == [event_id]

    # Once the first has stopped, the spool is free again.
    third = DaemonProcess(second_config, env=env, plugins="recorder")
    try:
        third.wait_for_log(lambda line: line.get("event") == "listening")
    finally:
        assert third.stop() == 0
