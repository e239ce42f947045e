"""Soak and crash harness for frameiod (run on demand, not in CI).

    python bench/soak.py --minutes 10 --rate 200
    python bench/soak.py --minutes 1 --kill-every 5s

Starts ``frameiod run`` itself on 127.0.0.1 with a recording plugin (``noop_plugin.py``
with one ``O_APPEND`` line per call) and sends it a mixed stream at ``--rate`` requests/s
from a bounded sender: valid deliveries, duplicates (the same signed request again), bad
signatures, stale timestamps and oversized bodies. Valid deliveries are retried like
Frame.io would (connection error, 5xx, 429) until answered 2xx; the rest are sent once.
Every 10 s it samples the daemon's RSS, open fds, threads, open connections, spool size
and the number of series on /metrics. At the end: acknowledged vs handled (lost must be
0), duplicates, and whether RSS grew more than 10 % after the warm-up.

``--kill-every 5s`` SIGKILLs the daemon at random intervals around that (uniformly 0.5x to
1.5x) and restarts it on the same spool, then checks that nothing acknowledged was lost.

All traffic goes to 127.0.0.1, and is bounded: ``rate x minutes x 60`` requests (plus the
duplicates' second sends and valid retries, at most one per 50 ms each for 4 minutes).
Refused requests claim to come through a local proxy (``X-Forwarded-For`` with addresses
from the IPv6 documentation prefix 2001:db8::/32, never contacted): frameiod counts them
against those addresses, so its per-address tracking is soaked too and the valid stream,
from one fixed address, is never blocked.

The asyncio task count is not observable from outside the process (frameiod exposes no
such gauge); what is sampled instead is the number of established connections to the
daemon (aiohttp runs one task per connection) and the running deliveries (one task each).
Exit status 1 if anything acknowledged was lost, an answer was not the expected one, or
RSS grew more than 10 % after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import noop_plugin  # noqa: E402 - after the path tweak above
from run import SECRET, free_port, proc_status, wait_listening  # noqa: E402

from frameiod.signature import sign  # noqa: E402

SAMPLE_SECONDS = 10.0
MAX_BODY = 65536
FRAMEIO_ADDRESS = "192.0.2.10"  # TEST-NET-1: a header value only, never contacted
KINDS = {"valid": 0.6, "duplicate": 0.15, "bad_signature": 0.1, "stale": 0.1, "oversized": 0.05}
EXPECTED = {"bad_signature": 401, "stale": 401, "oversized": 413}
EVENT_TYPES = ("file.ready", "file.created", "comment.created", "folder.updated")
RETRY_FOR = 240.0  # seconds a valid delivery is retried (Frame.io's tolerance is 5 min)


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (like 5s, 500ms, 1m)")
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match[2]]


@dataclass
class Tally:
    """What the sender saw."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    answers: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    connection_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    acked: dict[str, str] = field(default_factory=dict)  # event id -> resource id
    duplicates_answered: int = 0
    """Second sends of a signed request answered 200 with the first one's event id."""
    retries: int = 0
    gave_up: int = 0


class Daemon:
    """``frameiod run`` as a subprocess that the harness may SIGKILL and restart."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, port: int) -> None:
        self.config, self.env, self.log, self.port = config, env, log, port
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start it and wait for the port (a restart reuses the port and the spool)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and files
                [sys.executable, "-m", "frameiod", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.starts += 1
        wait_listening(self.port, self.process, timeout=30)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def _body(kind: str, number: int) -> tuple[bytes, str]:
    resource = f"soak-{number}-{uuid.uuid4()}"
    payload = {
        "type": random.choice(EVENT_TYPES),  # noqa: S311 - test data
        "account": {"id": str(uuid.uuid4())},
        "workspace": {"id": str(uuid.uuid4())},
        "project": {"id": str(uuid.uuid4())},
        "resource": {"id": resource, "type": "file"},
        "user": {"id": str(uuid.uuid4())},
    }
    if kind == "oversized":
        payload["padding"] = "x" * (MAX_BODY + 4096)
    return json.dumps(payload).encode(), resource


def _request(kind: str, number: int) -> tuple[bytes, dict[str, str], str]:
    """One request of ``kind``: body, headers, resource id."""
    body, resource = _body(kind, number)
    timestamp = int(time.time()) - (600 if kind == "stale" else 0)
    signature = sign(SECRET, body, str(timestamp))
    if kind == "bad_signature":
        signature = signature[:-4] + ("0000" if not signature.endswith("0000") else "1111")
    headers = {
        "Content-Type": "application/json",
        "X-Frameio-Request-Timestamp": str(timestamp),
        "X-Frameio-Signature": signature,
    }
    if kind in EXPECTED:
        # 2001:db8::/32 is for documentation: a label for frameiod's per-address budgets.
        headers["X-Forwarded-For"] = f"2001:db8::{random.getrandbits(32):x}"
    else:
        headers["X-Forwarded-For"] = FRAMEIO_ADDRESS
    return body, headers, resource


class Sender:
    """Sends ``total`` requests at ``rate``/s with at most ``concurrency`` in flight."""

    def __init__(self, url: str, rate: float, total: int, concurrency: int) -> None:
        self.url, self.rate, self.total = url, rate, total
        self.tally = Tally()
        self._slots = asyncio.Semaphore(concurrency)
        self.behind = 0.0  # the largest lag behind the schedule, in seconds

    async def run(self) -> None:
        """Send everything on schedule (or as close as the slots allow), then wait."""
        kinds, weights = zip(*KINDS.items(), strict=True)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = set()
            began = time.monotonic()
            for number in range(self.total):
                due = began + number / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._slots.acquire()
                self.behind = max(self.behind, time.monotonic() - due)
                kind = random.choices(kinds, weights)[0]  # noqa: S311 - test data
                task = asyncio.create_task(self._send(session, kind, number))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

    async def _post(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str]]:
        async with session.post(self.url, data=body, headers=headers) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {}
            return response.status, answer

    async def _send(self, session: aiohttp.ClientSession, kind: str, number: int) -> None:
        tally = self.tally
        try:
            body, headers, resource = _request(kind, number)
            tally.sent[kind] += 1
            if kind in EXPECTED:
                try:
                    status, _ = await self._post(session, body, headers)
                except (aiohttp.ClientError, TimeoutError):
                    tally.connection_errors[kind] += 1
                    return
                tally.answers[kind, status] += 1
                if status != EXPECTED[kind]:
                    tally.unexpected[kind, status] += 1
                return
            event_id = await self._deliver(session, kind, body, headers, resource)
            if kind == "duplicate" and event_id is not None:
                # The same signed request again, as Frame.io's retry or a replay would be.
                tally.sent["duplicate (second send)"] += 1
                again = await self._deliver(session, "duplicate (second send)", body, headers)
                if again == event_id:
                    tally.duplicates_answered += 1
        finally:
            self._slots.release()

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        body: bytes,
        headers: dict[str, str],
        resource: str | None = None,
    ) -> str | None:
        """POST until a 2xx (retrying like Frame.io), record the acknowledged id.

        A first send is answered 202, or 200 if an earlier attempt was committed but its
        answer lost (a crash); a second send (``resource`` None) must be answered 200.
        """
        tally = self.tally
        deadline = time.monotonic() + RETRY_FOR
        attempts = 0
        while True:
            attempts += 1
            try:
                status, answer = await self._post(session, body, headers)
            except (aiohttp.ClientError, TimeoutError):
                tally.connection_errors[kind] += 1
                status, answer = 0, {}
            else:
                tally.answers[kind, status] += 1
            if 200 <= status < 300:
                expected = {200} if resource is None else {202} if attempts == 1 else {200, 202}
                if status not in expected:
                    tally.unexpected[kind, status] += 1
                if resource is not None:
                    tally.acked[answer["id"]] = resource
                return answer["id"]
            if status and status not in (429, 503):
                tally.unexpected[kind, status] += 1
                return None
            if time.monotonic() > deadline:
                tally.gave_up += 1
                return None
            tally.retries += 1
            await asyncio.sleep(0.05)


def _metrics(port: int) -> tuple[int, dict[str, float]]:
    """Series on /metrics, and the values of a few of them."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1, {}
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    values = {}
    for line in series:
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return len(series), values


def _connections(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (IPv4 and IPv6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
                    count += 1
    return count


def sample(daemon: Daemon, spool: Path, elapsed: float) -> dict[str, float]:
    """One row of the 10-second table."""
    pid = daemon.pid
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    spool_bytes = sum(
        path.stat().st_size
        for path in (
            spool,
            spool.with_name(spool.name + "-wal"),
            spool.with_name(spool.name + "-shm"),
        )
        if path.exists()
    )
    series, values = _metrics(daemon.port)
    return {
        "t": round(elapsed),
        "pid": pid,
        "rss_mib": round(proc_status(pid, "VmRSS") / 1024, 1),
        "fds": fds,
        "threads": proc_status(pid, "Threads"),
        "connections": _connections(daemon.port),
        "running": values.get('frameiod_spool_deliveries{state="running"}', -1),
        "pending": values.get('frameiod_spool_deliveries{state="pending"}', -1),
        "spool_mib": round(spool_bytes / 2**20, 1),
        "series": series,
    }


def _handled(record: Path) -> list[str]:
    if not record.exists():
        return []
    return [line.split()[0] for line in record.read_text().splitlines() if line.strip()]


def _wait_handled(record: Path, acked: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not acked <= set(_handled(record)) and time.monotonic() < deadline:
        time.sleep(0.5)


async def _kill_now_and_then(daemon: Daemon, every: float, done: asyncio.Event) -> int:
    kills = 0
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(random.uniform(0.5 * every, 1.5 * every)):  # noqa: S311
                await done.wait()
        if done.is_set():
            break
        await asyncio.to_thread(daemon.kill)
        kills += 1
        await asyncio.to_thread(daemon.start)
    return kills


async def _sample_every(
    daemon: Daemon, spool: Path, began: float, rows: list[dict[str, float]], done: asyncio.Event
) -> None:
    print(
        "   t    pid  rss MiB  fds  threads  conns  running  pending  spool MiB  series",
        flush=True,
    )
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SAMPLE_SECONDS):
                await done.wait()
        if done.is_set():
            return
        row = await asyncio.to_thread(sample, daemon, spool, time.monotonic() - began)
        rows.append(row)
        print(
            f"{row['t']:4.0f} {row['pid']:6d} {row['rss_mib']:8.1f} {row['fds']:4d} "
            f"{row['threads']:8d} {row['connections']:6d} {row['running']:8.0f} "
            f"{row['pending']:8.0f} {row['spool_mib']:10.1f} {row['series']:7d}",
            flush=True,
        )


async def soak(args: argparse.Namespace, folder: Path) -> int:  # noqa: PLR0915 - one story
    """Run the soak in ``folder``; print the summary; the exit status."""
    port = free_port()
    record = folder / "handled.txt"
    site = noop_plugin.install(folder / "site")
    config = folder / "config.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
max_body_bytes = {MAX_BODY}
# Refused requests carry X-Forwarded-For (documentation addresses, never contacted).
trusted_proxies = ["127.0.0.1"]
[log]
format = "json"
[sources.default]
secrets = ["{SECRET}"]
[spool]
# Purged every few seconds once done for this long: the spool should level off.
keep_done = "{args.keep_done}"
""")
    env = {
        **os.environ,
        "PYTHONPATH": site["PYTHONPATH"],
        "FRAMEIOD_PLUGINS": site["FRAMEIOD_PLUGINS"],
        "BENCH_RECORD": str(record),
        "BENCH_RECORD_EACH": "1",
    }
    log = folder / "frameiod.log"
    daemon = Daemon(config, env, log, port)
    daemon.start()
    spool = folder / "frameiod.db"
    total = int(args.rate * args.minutes * 60)
    sender = Sender(f"http://127.0.0.1:{port}/webhooks/default", args.rate, total, args.concurrency)
    rows: list[dict[str, float]] = []
    done = asyncio.Event()
    began = time.monotonic()
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} req/s ({total} requests), "
        f"kill every {args.kill_every or 'never'}; frameiod pid {daemon.pid}, port {port}, "
        f"folder {folder}",
        flush=True,
    )
    sampler = asyncio.create_task(_sample_every(daemon, spool, began, rows, done))
    killer = (
        asyncio.create_task(_kill_now_and_then(daemon, args.kill_every, done))
        if args.kill_every
        else None
    )
    try:
        await sender.run()
    finally:
        done.set()
        kills = await killer if killer else 0
        await sampler
    sent_for = time.monotonic() - began
    rows.append(await asyncio.to_thread(sample, daemon, spool, sent_for))

    tally = sender.tally
    await asyncio.to_thread(_wait_handled, record, set(tally.acked), 120)
    drained_in = time.monotonic() - began - sent_for
    status = daemon.stop()

    handled = _handled(record)
    lost = set(tally.acked) - set(handled)
    twice = len(handled) - len(set(handled))
    unknown = set(handled) - set(tally.acked)  # handled but never acknowledged to us
    warm_up = min(60.0, sent_for / 4)
    after = [row for row in rows if row["t"] >= warm_up]
    growth = None
    if not args.kill_every and len(after) >= 4:
        reference = after[0]["rss_mib"]
        final = statistics.median(row["rss_mib"] for row in after[-3:])
        growth = (final - reference) / reference

    print(f"\nsent for {sent_for:.0f} s (at most {sender.behind:.2f} s behind schedule)")
    for kind in (*KINDS, "duplicate (second send)"):
        answers = ", ".join(
            f"{status_code}: {count}"
            for (k, status_code), count in sorted(tally.answers.items())
            if k == kind
        )
        errors = tally.connection_errors[kind]
        print(
            f"  {kind:24} sent {tally.sent[kind]:6d}   answers {answers}"
            + (f", connection errors {errors}" if errors else "")
        )
    print(
        f"acknowledged {len(tally.acked)}, handled {len(set(handled))} (all acknowledged ones "
        f"within {drained_in:.1f} s of the last send), lost {len(lost)}, handled twice {twice}, "
        f"handled but not acknowledged to the sender {len(unknown)}"
    )
    print(
        f"duplicates: {tally.duplicates_answered} of {tally.sent['duplicate (second send)']} "
        f"second sends answered 200 with the first one's id; retries {tally.retries}, "
        f"given up {tally.gave_up}; unexpected answers {dict(tally.unexpected) or 'none'}"
    )
    if args.kill_every:
        print(f"SIGKILLs {kills}, starts {daemon.starts}; RSS growth not judged (restarts)")
    elif growth is None:
        print("RSS growth: too few samples after the warm-up to judge")
    else:
        print(
            f"RSS after warm-up ({warm_up:.0f} s): {after[0]['rss_mib']:.1f} -> "
            f"{statistics.median(row['rss_mib'] for row in after[-3:]):.1f} MiB "
            f"({100 * growth:+.1f} %): {'GREW more than 10 %' if growth > 0.1 else 'steady'}"
        )
    first, last = rows[0], rows[-1]
    print(
        f"over the run: fds {first['fds']} -> {last['fds']}, threads {first['threads']} -> "
        f"{last['threads']}, /metrics series {first['series']} -> {last['series']}, spool "
        f"{first['spool_mib']} -> {last['spool_mib']} MiB (max "
        f"{max(row['spool_mib'] for row in rows)}); daemon exit status {status}"
    )
    failed = bool(lost) or bool(tally.unexpected) or tally.gave_up or (growth or 0) > 0.1
    failed = failed or status != 0
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


def main() -> int:
    """Parse the options, run the soak in a scratch folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--kill-every", type=_duration, default=0.0, help="e.g. 5s")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, at most")
    parser.add_argument("--keep-done", default="1m", help="[spool] keep_done")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not 0 < args.rate <= 2000 or not 0 < args.minutes <= 120:
        parser.error("--rate must be in (0, 2000] and --minutes in (0, 120]")
    random.seed(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="frameiod-soak-"))
    status = 1
    try:
        status = asyncio.run(soak(args, folder))
    finally:
        if args.keep or status:
            print(f"kept {folder} (its frameiod.log, handled.txt and spool)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
