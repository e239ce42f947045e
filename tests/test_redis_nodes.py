"""Several ``frameiod run`` receivers on one real Redis: nothing acknowledged is lost when
a receiver or Redis itself dies, duplicates and rate limits hold across receivers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis_support import RedisServer, free_port
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

from frameiod.store.redis_keys import connect

# Each call writes "start|end <event id> <pid> <handler>" with one O_APPEND write: lines
# from several processes never interleave.
RECORDER = """
import asyncio
import os

from frameiod import App

app = App()
LOG = os.environ["RECORDER_LOG"]
DELAY = float(os.environ.get("RECORDER_DELAY", "0"))


def _write(kind, event, handler):
    with open(LOG, "a") as log:
        log.write(f"{kind} {event.event_id} {os.getpid()} {handler}\\n")


@app.on_webhook("file.ready")
async def record(event):
    _write("start", event, "record")
    await asyncio.sleep(DELAY)
    _write("end", event, "record")


@app.on_webhook("file.upload.completed")
async def steady(event):
    _write("end", event, "steady")


@app.on_webhook("file.upload.completed")
async def flaky(event):
    # Fails the first two attempts, wherever they run: the log is the shared memory.
    with open(LOG) as log:
        tries = sum(1 for line in log if line.split()[1:2] == [event.event_id]
                    and line.endswith(" flaky\\n"))
    _write("try", event, "flaky")
    if tries < 2:
        raise RuntimeError(f"failing attempt {tries + 1}")
    _write("end", event, "flaky")
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Records:
    """The recorder's log, parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int, str]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            kind, event_id, pid, handler = line.split()
            rows.append((kind, event_id, int(pid), handler))
        return rows

    def ended(self, handler: str = "record") -> set[str]:
        return {e for kind, e, _, h in self.lines() if kind == "end" and h == handler}


def _config(tmp_path: Path, redis_url: str, *, dispatch: str = "", extra: str = "") -> Path:
    """A receiver's config on Redis at ``redis_url``; ``extra`` goes into the source's table,
    ``dispatch`` into ``[dispatch]``."""
    timings = 'handler_timeout = "2s"\nbackoff_initial = "0.2s"\nbackoff_max = "0.5s"\n'
    return write_config(
        tmp_path,
        config_toml(
            secret=SECRET,
            log=JSON_LOG,
            spool=f'backend = "redis"\nredis_url = "{redis_url}"',
            dispatch=timings + dispatch,
            source=extra,
        ),
    )


def _nodes(
    tmp_path: Path,
    server: RedisServer,
    count: int,
    *,
    extra: str = "",
    delay: float = 0.0,
    dispatch: str = "",
) -> tuple[list[DaemonProcess], Records]:
    """``count`` receivers with the recorder plugin; ``extra`` goes into the source's table,
    ``dispatch`` into ``[dispatch]``."""
    log = tmp_path / "handled.log"
    log.touch()
    env = {
        **install_plugin(tmp_path / "site", "recorder", RECORDER),
        "RECORDER_LOG": str(log),
        "RECORDER_DELAY": str(delay),
    }
    config = _config(tmp_path, server.url, dispatch=dispatch, extra=extra)
    nodes = [DaemonProcess(config, env=env, plugins="recorder") for _ in range(count)]
    for node in nodes:
        node.wait_for("listening")
    return nodes, Records(log)


def _body(event_type: str = "file.ready") -> bytes:
    resource = {"id": f"r-{uuid.uuid4()}", "type": "file"}
    return json.dumps({"type": event_type, "resource": resource}).encode()


def _stop(nodes: list[DaemonProcess]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            assert node.stop() == 0, "".join(node.raw)
        node.kill()


def test_a_receiver_killed_mid_stream_loses_nothing_and_its_calls_are_taken_over(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, records = _nodes(tmp_path, redis_server, 3, delay=0.3)
    urls = [node.url() for node in nodes]
    victim = nodes[1]
    acked: list[str] = []
    refused = 0
    try:
        with httpx.Client(timeout=5) as client:
            for number in range(120):
                if number == 40:
                    # Kill node 1 while it is inside a handler call, not between two.
                    def busy() -> bool:
                        lines = records.lines()
                        began = {
                            e for k, e, p, _ in lines if k == "start" and p == victim.process.pid
                        }
                        done = {e for k, e, p, _ in lines if k == "end" and p == victim.process.pid}
                        return bool(began - done)

                    wait_until(busy, timeout=20)
                    victim.process.send_signal(signal.SIGKILL)
                    victim.wait()
                url = urls[number % 3]
                body = _body()
                try:
                    response = client.post(url, content=body, headers=signed_headers(body))
                except httpx.HTTPError:
                    refused += 1  # the dead node: Frame.io would retry elsewhere later
                    continue
                assert response.status_code == 202, response.text
                acked.append(response.json()["id"])
        # Leases are the handler timeout (2 s) plus a 5 s grace: the others take over after.
        wait_until(lambda: set(acked) <= records.ended(), timeout=40)
    finally:
        _stop([n for n in nodes if n is not victim])
        victim.kill()
    lines = records.lines()
    cut_short = {e for k, e, p, _ in lines if k == "start" and p == victim.process.pid} - {
        e for k, e, p, _ in lines if k == "end" and p == victim.process.pid
    }
    finished_elsewhere = {e for k, e, p, _ in lines if k == "end" and p != victim.process.pid}
    print(
        f"\nacknowledged {len(acked)}, refused by the dead node {refused}, "
        f"calls cut short by the kill {len(cut_short)}, lost {len(set(acked) - records.ended())}"
    )
    assert refused > 0, "the victim was not killed mid-stream"
    assert cut_short, "the victim was killed between calls"
    assert cut_short <= finished_elsewhere, "a call of the dead node was not taken over"
    assert set(acked) <= records.ended()
    survivors = {n.process.pid for n in nodes if n is not victim}
    assert {p for k, _, p, _ in lines if k == "end"} & survivors == survivors


def test_the_same_signed_request_at_two_receivers_is_a_duplicate(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, records = _nodes(tmp_path, redis_server, 2)
    try:
        body = _body()
        headers = signed_headers(body)
        first = httpx.post(nodes[0].url(), content=body, headers=headers, timeout=5)
        second = httpx.post(nodes[1].url(), content=body, headers=headers, timeout=5)
        assert first.status_code == 202
        assert second.status_code == 200
        assert second.json() == {"status": "duplicate", "id": first.json()["id"]}
        wait_until(lambda: first.json()["id"] in records.ended())
    finally:
        _stop(nodes)
    assert [e for k, e, _, _ in records.lines() if k == "end"] == [first.json()["id"]]


def test_the_source_rate_limit_is_shared_by_all_receivers(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, _ = _nodes(tmp_path, redis_server, 3, extra="rate = 5\nburst = 5\n")
    urls = itertools.cycle([node.url() for node in nodes])
    statuses = []
    try:
        with httpx.Client(timeout=5) as client:
            started = time.monotonic()
            for _ in range(40):
                body = _body()
                response = client.post(next(urls), content=body, headers=signed_headers(body))
                statuses.append(response.status_code)
            elapsed = time.monotonic() - started
        metrics = "".join(httpx.get(node.url("/metrics")).text for node in nodes)
    finally:
        _stop(nodes)
    accepted = statuses.count(202)
    print(f"\n40 requests over 3 receivers in {elapsed:.2f}s: {accepted} accepted")
    assert set(statuses) <= {202, 429}
    assert 5 <= accepted <= 5 + 5 * elapsed + 1
    limited = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('frameiod_rate_limited_total{source="default"}')
    )
    assert limited == statuses.count(429)


def test_redis_restarting_mid_stream_answers_503_then_recovers_losing_nothing(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, records = _nodes(tmp_path, redis_server, 2)
    acked: list[str] = []
    unavailable: list[dict[str, str]] = []
    stop_sending = threading.Event()

    def send() -> None:
        with httpx.Client(timeout=5) as client:
            for number in itertools.count():
                if stop_sending.is_set() or number > 2000:
                    return
                body = _body()
                response = client.post(
                    nodes[number % 2].url(), content=body, headers=signed_headers(body)
                )
                if response.status_code == 202:
                    acked.append(response.json()["id"])
                else:
                    assert response.status_code == 503, response.text
                    assert response.headers["Retry-After"]
                    unavailable.append(response.json())

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(acked) >= 30, timeout=20)
        # SIGKILL, not a clean shutdown: with appendfsync always, what Redis answered is on disk.
        redis_server.stop(kill=True)
        wait_until(lambda: len(unavailable) >= 5, timeout=20)
        wait_until(
            lambda: any(n.logs("dispatch paused: the spool refuses writes") for n in nodes),
            timeout=20,
        )
        probes = [httpx.get(nodes[0].url("/readyz"), timeout=5) for _ in range(2)]
        before_restart = len(acked)
        redis_server.start()
        wait_until(lambda: len(acked) >= before_restart + 30, timeout=30)
        wait_until(lambda: httpx.get(nodes[0].url("/readyz"), timeout=5).status_code == 200)
        ready_again = httpx.get(nodes[0].url("/readyz"), timeout=5).status_code
        stop_sending.set()
        sender.join(10)
        wait_until(lambda: set(acked) <= records.ended(), timeout=30)
        alive = [node.process.poll() is None for node in nodes]
    finally:
        stop_sending.set()
        _stop(nodes)
    print(f"\nacknowledged {len(acked)}, answered 503 while Redis was down {len(unavailable)}")
    assert alive == [True, True], "a receiver had to be restarted"
    assert {body["error"] for body in unavailable} == {"redis_unavailable"}
    assert all(f"Redis at {redis_server.url} cannot be reached" in b["detail"] for b in unavailable)
    assert set(acked) <= records.ended()
    # Load balancers stop sending to a receiver that cannot reach Redis, and come back.
    assert [p.status_code for p in probes] == [503, 503]
    assert ready_again == 200
    assert {p.json()["reason"] for p in probes} == {"redis_unavailable"}
    assert len(nodes[0].logs("spool not ready")) == 1
    assert len(nodes[0].logs("spool ready again")) == 1


def test_readyz_answers_503_within_its_timeout_while_redis_hangs(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, records = _nodes(tmp_path, redis_server, 1)
    assert redis_server.process is not None
    try:
        assert httpx.get(nodes[0].url("/readyz"), timeout=5).status_code == 200
        redis_server.process.send_signal(signal.SIGSTOP)  # up, but answering nothing
        try:
            probe = httpx.get(nodes[0].url("/readyz"), timeout=5)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        wait_until(lambda: httpx.get(nodes[0].url("/readyz"), timeout=5).status_code == 200)
        # The command cut short by the probe's timeout left no stale reply behind.
        body = _body()
        after = httpx.post(nodes[0].url(), content=body, headers=signed_headers(body), timeout=5)
        wait_until(lambda: after.json()["id"] in records.ended())
    finally:
        _stop(nodes)
    assert after.status_code == 202
    assert probe.status_code == 503
    assert probe.json() == {
        "status": "spool_unavailable",
        "reason": "spool_timeout",
        "detail": "the spool did not answer within 0.5s",
    }


def test_a_handler_failing_twice_succeeds_later_and_its_sibling_ran_once(
    tmp_path: Path, redis_server: RedisServer
):
    nodes, records = _nodes(tmp_path, redis_server, 2)
    try:
        body = _body("file.upload.completed")
        response = httpx.post(nodes[0].url(), content=body, headers=signed_headers(body))
        assert response.status_code == 202
        event_id = response.json()["id"]
        wait_until(lambda: event_id in records.ended("flaky"), timeout=20)
    finally:
        _stop(nodes)
    calls = [(k, h) for k, e, _, h in records.lines() if e == event_id]
    assert calls.count(("try", "flaky")) == 3
    assert calls.count(("end", "flaky")) == 1
    assert calls.count(("end", "steady")) == 1
    # Where each attempt ran is up to the receivers; every one of them is a frameiod here.
    assert {p for _, e, p, _ in records.lines() if e == event_id} <= {n.process.pid for n in nodes}
    assert os.path.getsize(records.path) > 0


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:{port}/0", "redis://:***@127.0.0.1:{port}/0"),
        ("redis://127.0.0.1:{port}/0?password=hunter2", "redis://127.0.0.1:{port}/0"),
    ],
    ids=["password-in-the-user-part", "password-in-the-query"],
)
def test_a_receiver_that_cannot_reach_redis_at_start_exits_1_naming_it(
    tmp_path: Path, given: str, shown: str
):
    port = free_port()  # nothing listens there
    node = DaemonProcess(_config(tmp_path, given.format(port=port)))
    assert node.wait() == 1
    line = node.wait_for("cannot open the spool")
    assert line["error"].startswith(f"cannot use Redis at {shown.format(port=port)}: ")
    assert "hunter2" not in "".join(node.raw)
    assert not node.logs("listening")


@pytest.mark.parametrize(
    "url",
    [
        "redis//:hunter2@127.0.0.1:6379/0",
        "http://:hunter2@127.0.0.1:6379/0",
        "redis://:hunter2@127.0.0.1:port/0",
        "redis://:hunter2@[::1/0",
    ],
)
def test_a_redis_url_that_is_not_one_exits_1_in_a_line_without_its_password(
    tmp_path: Path, url: str
):
    node = DaemonProcess(_config(tmp_path, url))
    assert node.wait() == 1
    line = node.wait_for("cannot open the spool")
    assert line["error"].startswith(
        "cannot use Redis at [spool] redis_url (not shown: it is not a redis://, rediss:// "
        "or unix:// URL): "
    )
    said = "".join(node.raw)
    assert "hunter2" not in said
    assert "Traceback" not in said


async def test_a_command_redis_was_too_slow_to_answer_is_not_sent_again(tmp_path: Path):
    """Redis stopped past the client's 2-s timeout runs, when it wakes, what it was sent
    meanwhile: a retry would run a script twice (an accept taking its source's token
    again, a claim whose first answer was lost)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client, observer = connect(server.url), connect(server.url)
    try:
        await client.ping()
        await observer.ping()
        process = server.process
        assert process is not None
        woken = asyncio.Event()

        def wake() -> None:
            process.send_signal(signal.SIGCONT)
            woken.set()

        # Woken after the client's timeout (2 s), while a retry would still be waiting.
        process.send_signal(signal.SIGSTOP)
        asyncio.get_running_loop().call_later(3.0, wake)
        try:
            with pytest.raises(RedisTimeoutError):
                await client.incr("sent")
        finally:
            await woken.wait()
        # Redis reads what waited in its sockets before this command, on a connection
        # made before the stop.
        runs = int(await observer.get("sent") or 0)
    finally:
        await client.aclose()
        await observer.aclose()
        server.stop()
    assert runs == 1


def test_a_receiver_stopped_while_redis_is_down_exits_cleanly_and_its_call_runs_later(
    tmp_path: Path, redis_server: RedisServer
):
    [node], records = _nodes(
        tmp_path, redis_server, 1, delay=1.5, dispatch='drain_timeout = "200ms"'
    )
    body = _body()
    response = httpx.post(node.url(), content=body, headers=signed_headers(body), timeout=5)
    event_id = response.json()["id"]
    wait_until(lambda: any(k == "start" and e == event_id for k, e, _, _ in records.lines()))
    redis_server.stop(kill=True)
    assert node.stop(timeout=20) == 0, "".join(node.raw)
    assert node.logs("cannot give back deliveries cut short; they run again later")
    assert node.logs("stopped")
    assert event_id not in records.ended()

    # Its lease (2 s timeout + 5 s grace) runs out, and the next receiver runs the call.
    redis_server.start()
    [again], _ = _nodes(tmp_path, redis_server, 1)  # the same recorder log
    try:
        wait_until(lambda: event_id in records.ended(), timeout=30)
    finally:
        _stop([again])
