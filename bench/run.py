"""``make bench``: frameiod side by side with the limit of its stack.

Starts, one after the other on 127.0.0.1, the minimal aiohttp server of ``baseline.py``
and ``frameiod run`` with the spool at ``synchronous = FULL`` and ``NORMAL``; pins each
server to CPU 0 and wrk to CPU 1 when there are two cores. wrk cycles through freshly
signed, distinct requests (more than a load sends, so frameiod never answers from its
duplicate check). Three alternating rounds; the median of each figure is reported, and
frameiod's as a ratio to the baseline measured in the same run, since machines are noisy.

Each round measures, per target:

- ingest: requests/s at 64 connections and p50/p99 latency at 8 (frameiod without plugins,
  so every request is one committed event and no handler runs), and at both, the server's
  CPU time per request from /proc: every thread's, and its event loop's (the main thread);
- for frameiod, end to end: the no-op handler plugin of ``noop_plugin.py`` loaded, wrk at
  64 connections for ``--e2e-seconds``; handler calls started per second in that window,
  and receipt to handler start: the handler's ``time.time()`` at its start minus the
  spool's ``events.received_at`` (frameiod's ``time.time()`` when it accepted the request).

Another target, ``durable-floor`` (``floor.py``), is frameiod with its spool's SQL
replaced by one append and ``fdatasync`` per batch: how close the real spool comes to the
least a durable acknowledgement can cost here.

Before the rounds, what an fsync costs on the disk (wall and CPU time), to read the
``synchronous = FULL`` figures by. Then, once, idle RSS and start to ``READY=1`` (over a
``NOTIFY_SOCKET`` datagram socket), median of 5 starts, with the example plugins loaded
(and without plugins, for reference), in a virtualenv of frameiod and those plugins alone.

``--profile`` instead records a py-spy flame graph of frameiod (FULL) under the
64-connection load to ``bench/profile-ingest.svg`` and its hottest frames to
``bench/profile-ingest.txt`` (py-spy: ``.venv/bin/pip install py-spy``).

Writes ``bench/results.json`` and prints Markdown tables for docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SECRET = "bench-secret"  # noqa: S105 - a throwaway secret for loopback only
# Requests are signed with timestamps spread over this many seconds before the script is
# written: a round must finish within the source's tolerance (5 minutes) less this.
SIGNED_OVER = 60
TWO_CORES = (os.cpu_count() or 1) >= 2
sys.path.insert(0, str(BENCH.parent))

sys.path.insert(0, str(BENCH.parent / "tests"))

import noop_plugin  # noqa: E402 - after the path tweak above
import scaleout  # noqa: E402
from redis_support import REDIS_SERVER, RedisServer  # noqa: E402 - shared with the tests

from frameiod.config import DispatchConfig  # noqa: E402
from frameiod.signature import sign  # noqa: E402

# Sources are rate-limited by default (1000/s, burst 2000), which would answer most of a
# wrk load with cheap 429s: the bench measures accepted requests, so it lifts the limit.
UNLIMITED = "rate = 1000000.0\nburst = 1000000"


@dataclass
class Round:
    """One target's ingest figures from one round."""

    rps_64: float
    p50_ms_8: float
    p99_ms_8: float
    errors: int
    peak_rss_mib: float
    cpu_us_64: float
    """The server's CPU time per request at 64 connections, every thread, µs."""
    loop_us_64: float
    """The part of ``cpu_us_64`` on the main thread (the event loop)."""
    cpu_us_8: float
    loop_us_8: float
    redis_us_64: float
    """Redis's CPU time per request at 64 connections, µs (NaN for targets without)."""
    wrk_us_64: float
    """wrk's CPU time per request at 64 connections, µs: the load's own cost."""


@dataclass
class EndToEnd:
    """frameiod with the no-op handler, from one round (times in ms, rates per second)."""

    calls_per_s: float
    """Every event of a full-speed load, handled: events / (last handler start - first receipt)."""
    load_calls_per_s: float
    """Handler calls started per second while the full-speed load ran."""
    load_acks_per_s: float
    """Requests acknowledged per second by the full-speed load (wrk)."""
    load_backlog: int
    """Events received during the full-speed load whose handler had not started at its end."""
    drain_calls_per_s: float
    """Handler calls started per second after the full-speed load ended, while its backlog
    drained with nothing arriving: what the dispatcher costs on its own."""
    load_p50_ms: float
    load_p99_ms: float
    """Receipt to handler start over the full-speed load's events (mostly queueing)."""
    paced_rate: float
    """The paced load's target: 80 % of ``calls_per_s`` as the spool's gauges first saw it."""
    paced_acks_per_s: float
    paced_calls_per_s: float
    """Handler calls started per second while the paced load ran."""
    paced_backlog: int
    p50_ms: float
    p99_ms: float
    """Receipt to handler start over the paced load's events."""
    errors: int
    """Non-2xx answers and socket errors, as wrk counted them."""
    timeouts: int
    """Of ``errors``, wrk's timeouts: requests not answered within 2 s (a stalled disk or
    machine), which the daemon may still have accepted."""
    unhandled: int
    """Events in the spool whose handler never started: lost, had frameiod acknowledged
    them."""
    wrapped: int
    """1 if wrk may have come round to a request again (a duplicate): the run is invalid."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin(cpu: int) -> list[str]:
    """The taskset prefix that pins a command to ``cpu`` (nothing on one core)."""
    return ["taskset", "-c", str(cpu)] if TWO_CORES and shutil.which("taskset") else []


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status (kB for memory fields), 0 if absent."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) so far of process ``pid``, every thread's (exited threads'
    included), and of its main thread alone, in seconds."""

    def ticks(stat: str) -> int:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    hertz = os.sysconf("SC_CLK_TCK")
    return ticks(f"/proc/{pid}/stat") / hertz, ticks(f"/proc/{pid}/task/{pid}/stat") / hertz


def frameiod_config(state: Path, port: int, synchronous: str = "FULL", extra: str = "") -> Path:
    """A frameiod config in ``state`` (spool there too): one source, no rate limit."""
    state.mkdir(parents=True, exist_ok=True)
    config = state / "config.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
max_body_bytes = 65536
[log]
format = "json"
[sources.default]
secrets = ["{SECRET}"]
{UNLIMITED}
[spool]
synchronous = "{synchronous}"
{extra}
""")
    return config


def write_script(path: Path, count: int) -> Path:
    """A wrk Lua script cycling through ``count`` distinct, freshly signed requests; returns
    its paced twin (`think_ms` says how to pace it).

    The requests go to a data file beside it, one per line, which the script reads at start:
    Lua cannot compile a chunk holding that many constants.

    Frame.io signs each delivery as it sends it, so timestamps rise with the stream. The
    requests' timestamps rise too, over the last `SIGNED_OVER` seconds (a few thousand
    requests share each second, as under load); one timestamp for all of them would scatter
    the spool's request index, led by the timestamp, over pages a live stream never touches.
    """
    now = int(time.time())
    data = path.with_suffix(".tsv")
    with data.open("w") as out:
        for number in range(count):
            timestamp = str(now - SIGNED_OVER + number * SIGNED_OVER // count)
            body = json.dumps(
                {
                    "type": "file.ready",
                    "account": {"id": str(uuid.uuid4())},
                    "workspace": {"id": str(uuid.uuid4())},
                    "project": {"id": str(uuid.uuid4())},
                    "resource": {"id": f"bench-{number}-{uuid.uuid4()}", "type": "file"},
                    "user": {"id": str(uuid.uuid4())},
                }
            ).encode()
            out.write(f"{timestamp}\t{sign(SECRET, body, timestamp)}\t{body.decode()}\n")
    # The script's first argument is where to start, so a warm-up can use requests the
    # measured run will not reach.
    common = f"""
local requests = {{}}
for line in io.lines("{data}") do
  local ts, sig, body = line:match("([^\t]*)\t([^\t]*)\t(.*)")
  requests[#requests + 1] = {{
    {{["Content-Type"] = "application/json",
     ["X-Frameio-Request-Timestamp"] = ts, ["X-Frameio-Signature"] = sig}},
    body,
  }}
end
local i = 0
local pause = 0
init = function(args)
  i = tonumber(args[1] or "0")
  pause = tonumber(args[2] or "0")
end
request = function()
  i = i % #requests + 1
  local r = requests[i]
  return wrk.format("POST", "/webhooks/default", r[1], r[2])
end
"""
    path.write_text(common)
    # wrk waits delay() ms after each answer before the connection's next request: with
    # the second argument at connections / rate * 1000, the load runs at about ``rate``
    # (less the answers' own latency). Milliseconds are whole: rounded at random, so the
    # mean is right. A separate script, since a delay() of 0 still costs a timer each.
    paced = path.with_name(path.stem + "-paced.lua")
    paced.write_text(common + "delay = function() return math.floor(pause + math.random()) end\n")
    return paced


def think_ms(connections: int, rate: float) -> float:
    """The paced script's think time for about ``rate`` requests/s over ``connections``."""
    return connections / rate * 1000


def _wrk(
    url: str,
    script: Path,
    connections: int,
    seconds: int,
    start: int = 0,
    *,
    pause_ms: float = 0,
    cpu: int | None = 1,
) -> dict[str, float]:
    """Run wrk on ``cpu`` (None: wherever); ``pause_ms`` is the paced script's think time
    per connection (see `write_script`). ``wrk_us`` is wrk's own CPU time per request."""
    command = [
        *(pin(cpu) if cpu is not None else []),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(start),
        *([f"{pause_ms:.3f}"] if pause_ms else []),
    ]
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(  # noqa: S603 - wrk, with our own script
            command, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert process.stdout is not None
        out = process.stdout.read()
        # Reaped here, for its own CPU time: several wrk may run at once.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        done = subprocess.CompletedProcess(command, process.returncode, out, stderr.read())
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, out, done.stderr)
    if "request = function" in done.stderr or "error" in done.stderr.lower():
        raise RuntimeError(f"wrk's script failed: {done.stderr.strip()}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    requests = int(re.search(r"(\d+) requests in", out)[1])

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = timeouts = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match[1])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in match.groups())
        timeouts = int(match[4])
    return {
        "rps": rps,
        "requests": requests,
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": errors,
        "timeouts": timeouts,
        "wrk_us": (usage.ru_utime + usage.ru_stime) * 1e6 / max(requests, 1),
    }


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Wait until something accepts connections on ``port``; raise if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not start listening")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_frameiod(
    config: Path,
    env: dict[str, str] | None = None,
    *,
    plugins: str | None = "",
    entry: Sequence[str] = ("-m", "frameiod"),
    cpu: int = 0,
    python: str = sys.executable,
    **popen: object,
) -> subprocess.Popen[bytes]:
    """``frameiod run`` on ``cpu`` with ``config``. ``plugins`` is $FRAMEIOD_PLUGINS (None:
    every installed plugin loads); ``env`` is added to the environment; ``entry`` is what
    the interpreter ``python`` runs (``floor.py`` for the durable floor)."""
    environ = {**os.environ, **(env or {})}
    environ.pop("FRAMEIOD_PLUGINS", None)
    if plugins is not None:
        environ["FRAMEIOD_PLUGINS"] = plugins
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and files
        [*pin(cpu), python, *entry, "run", "--config", str(config)],
        env=environ,
        **popen,
    )


@dataclass
class Served:
    """A target's server process, and the Redis it uses, if any."""

    process: subprocess.Popen[bytes]
    redis: RedisServer | None = None


def _redis_server(state: Path, stack: contextlib.ExitStack, cpu: int | None = 1) -> RedisServer:
    """A fresh Redis, appendfsync always (the SQLite FULL promise), by default on the load
    generator's core: the other machine, as it would be in production."""
    redis = RedisServer(state / "redis", prefix=pin(cpu) if cpu is not None else [])
    redis.start()
    stack.callback(redis.stop)
    return redis


def _serve(target: str, port: int, folder: Path, stack: contextlib.ExitStack) -> Served:
    if target == "baseline":
        return Served(
            subprocess.Popen(  # noqa: S603 - our own interpreter and files
                [*pin(0), sys.executable, str(BENCH / "baseline.py"), str(port), SECRET],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    state = folder / target
    shutil.rmtree(state, ignore_errors=True)
    if target == "frameiod-redis":
        redis = _redis_server(state, stack)
        extra = f'backend = "redis"\nredis_url = "{redis.url}"'
        return Served(start_frameiod(frameiod_config(state, port, "FULL", extra)), redis)
    if target == "durable-floor":
        floor = [str(BENCH / "floor.py"), str(state / "floor.log")]
        return Served(start_frameiod(frameiod_config(state, port), entry=floor))
    synchronous = target.removeprefix("frameiod-").upper()
    return Served(start_frameiod(frameiod_config(state, port, synchronous)))


def _load(
    target: str, folder: Path, script: Path, *, connections: int, seconds: int, warm_up_at: int
) -> tuple[dict[str, float], float]:
    """A fresh server (and spool) per load, so no request is ever seen twice. The figures
    gain ``cpu_us`` and ``loop_us``: the server's CPU per request (see `Round`), and
    ``redis_us``: its Redis's (NaN without)."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        served = _serve(target, port, folder, stack)
        process = served.process
        redis_pid = served.redis.process.pid if served.redis and served.redis.process else None
        try:
            wait_listening(port, process)
            url = f"http://127.0.0.1:{port}"
            _wrk(url, script, connections, 1, start=warm_up_at)
            before = cpu_seconds(process.pid)
            redis_before = cpu_seconds(redis_pid)[0] if redis_pid else math.nan
            figures = _wrk(url, script, connections, seconds)
            after = cpu_seconds(process.pid)
            redis_after = cpu_seconds(redis_pid)[0] if redis_pid else math.nan
            rss = proc_status(process.pid, "VmHWM") / 1024
        finally:
            _stop(process)
    per_request = 1e6 / max(figures["requests"], 1)
    figures["cpu_us"] = (after[0] - before[0]) * per_request
    figures["loop_us"] = (after[1] - before[1]) * per_request
    figures["redis_us"] = (redis_after - redis_before) * per_request
    return figures, rss


def measure(target: str, folder: Path, seconds: int, script: Path, warm_up_at: int) -> Round:
    """``target``'s throughput at 64 connections and latency at 8."""
    wide, rss_wide = _load(
        target, folder, script, connections=64, seconds=seconds, warm_up_at=warm_up_at
    )
    narrow, rss_narrow = _load(
        target, folder, script, connections=8, seconds=seconds, warm_up_at=warm_up_at
    )
    return Round(
        wide["rps"],
        narrow["p50"],
        narrow["p99"],
        int(wide["errors"] + narrow["errors"]),
        max(rss_wide, rss_narrow),
        wide["cpu_us"],
        wide["loop_us"],
        narrow["cpu_us"],
        narrow["loop_us"],
        wide["redis_us"],
        wide["wrk_us"],
    )


def measure_fsync(folder: Path, count: int = 2000) -> dict[str, float]:
    """What durability costs on this disk, for reading the FULL figures: ``count`` times,
    append 16 KiB (a small group commit's WAL frames) to a file in ``folder`` and
    ``fdatasync`` it. Wall time per call (p50, p99, ms) and CPU time per call (µs)."""
    walls: list[float] = []
    cpu = 0.0
    path = folder / "fsync-probe"
    block = b"\x5a" * 16384
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    try:
        for _ in range(count):
            os.write(descriptor, block)
            started, cpu_started = time.perf_counter(), time.thread_time()
            os.fdatasync(descriptor)
            walls.append(time.perf_counter() - started)
            cpu += time.thread_time() - cpu_started
    finally:
        os.close(descriptor)
        path.unlink()
    return {
        "p50_ms": round(percentile(walls, 50) * 1000, 3),
        "p99_ms": round(percentile(walls, 99) * 1000, 3),
        "cpu_us": round(cpu / count * 1e6, 1),
    }


# --- end to end --------------------------------------------------------------------------


class SqliteView:
    """What the end-to-end loads read of a SQLite spool, beside the daemon (WAL lets a
    reader in)."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool

    def _query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True)) as conn:
            return conn.execute(sql, args).fetchall()

    def unfinished(self) -> int:
        """Deliveries pending or running; -1 if the spool cannot be read yet."""
        try:
            sql = "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'running')"
            return self._query(sql)[0][0]
        except sqlite3.Error:
            return -1  # busy or not created yet: ask again

    def received(self, after: float = 0.0) -> dict[str, float]:
        """Event id → received_at, for events received after ``after``."""
        return dict(self._query("SELECT id, received_at FROM events WHERE received_at > ?", after))

    def last_done(self) -> float:
        """When the last delivery was updated."""
        return self._query("SELECT MAX(updated_at) FROM deliveries")[0][0] or 0.0


class RedisView:
    """The same, of a Redis spool (the default key prefix)."""

    def __init__(self, url: str, prefix: str = "frameiod") -> None:
        import redis  # noqa: PLC0415 - only where the Redis rows run

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def unfinished(self) -> int:
        """Deliveries pending or running (the spool's own counters)."""
        counts = self.client.hgetall(f"{self.prefix}:counts")
        return int(counts.get("pending", 0)) + int(counts.get("running", 0))

    def received(self, after: float = 0.0) -> dict[str, float]:
        """Event id → received_at, for events received after ``after``."""
        key = f"{self.prefix}:events"
        return dict(self.client.zrangebyscore(key, f"({after}", "+inf", withscores=True))

    def last_done(self) -> float:
        """Now: asked right after the spool drained (to a tenth of a second)."""
        return time.time()


SpoolView = SqliteView | RedisView


def _wait_drained(view: SpoolView, timeout: float) -> float:
    """Seconds until no delivery is pending or running (``timeout`` if never)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if view.unfinished() == 0:
            return time.monotonic() - began
        time.sleep(0.1)
    return timeout


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class _Phase:
    """One load's events and what the handler recorded of them."""

    def __init__(
        self, received: dict[str, float], starts: dict[str, float], seconds: float
    ) -> None:
        self.received, self.starts, self.seconds = received, starts, seconds
        self.began = min(received.values())
        self.ended = self.began + seconds

    def calls_per_s(self) -> float:
        began, ended = self.began, self.ended
        return sum(began <= t < ended for t in self.starts.values()) / self.seconds

    def latencies(self) -> list[float]:
        return [
            (self.starts[event_id] - at) * 1000
            for event_id, at in self.received.items()
            if event_id in self.starts
        ]

    def backlog(self) -> int:
        ended = self.ended
        return sum(
            1
            for event_id, at in self.received.items()
            if at < ended and self.starts.get(event_id, math.inf) >= ended
        )

    def drained(self) -> float:
        after = [
            at
            for event_id, at in self.starts.items()
            if event_id in self.received and at >= self.ended
        ]
        return len(after) / (max(after) - self.ended) if len(after) > 1 else math.nan

    def throughput(self) -> float:
        last = max(self.starts[event_id] for event_id in self.received if event_id in self.starts)
        return len(self.received) / (last - self.began)


def measure_e2e(
    synchronous: str,
    folder: Path,
    script: Path,
    paced: Path,
    *,
    seconds: int,
    region: int,
    workers: int | None = None,
    redis: bool = False,
) -> EndToEnd:
    """frameiod with the no-op handler: wrk at 64 connections for ``seconds`` at full speed
    (requests ``[0, region)`` of ``script``), drained; then paced at 80 % of what that
    achieved end to end (``[region, 2 * region)``), drained. Warm-up from ``2 * region``.
    With ``redis``, the spool is on a fresh Redis as in the ``frameiod-redis`` target."""
    state = folder / ("e2e-redis" if redis else f"e2e-{synchronous.lower()}")
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    with contextlib.ExitStack() as stack:
        # `frameiod_config` puts ``extra`` in [spool]: its own lines first, then [dispatch].
        extra = f"\n[dispatch]\nworkers = {workers}" if workers else ""
        view: SpoolView = SqliteView(state / "frameiod.db")
        if redis:
            server = _redis_server(state, stack)
            extra = f'backend = "redis"\nredis_url = "{server.url}"{extra}'
            view = RedisView(server.url)
        config = frameiod_config(state, port, synchronous, extra)
        return _end_to_end(config, state, view, script, paced, seconds=seconds, region=region)


def _end_to_end(
    config: Path,
    state: Path,
    spool: SpoolView,
    script: Path,
    paced: Path,
    *,
    seconds: int,
    region: int,
) -> EndToEnd:
    folder = state.parent
    port = int(re.search(r"port = (\d+)", config.read_text())[1])
    record = state / "handler-starts.txt"
    site = noop_plugin.install(folder / "site")
    env = {"PYTHONPATH": site["PYTHONPATH"], "BENCH_RECORD": str(record), "BENCH_RECORD_EACH": ""}
    process = start_frameiod(config, env, plugins=site["FRAMEIOD_PLUGINS"])
    try:
        wait_listening(port, process)
        url = f"http://127.0.0.1:{port}"
        warm = _wrk(url, script, 64, 1, start=2 * region)
        _wait_drained(spool, 60)
        if not (warmed := spool.received()):
            raise RuntimeError(f"the warm-up left no event in the spool: {warm}")
        mark = max(warmed.values())
        load = _wrk(url, script, 64, seconds)
        _wait_drained(spool, 600)
        first = spool.received(mark)
        # The handler's own records are read at the end; the spool's last update is close
        # enough to size the paced load.
        rate = 0.8 * len(first) / (spool.last_done() - min(first.values()))
        mark = max(first.values())
        steady = _wrk(url, paced, 64, seconds, region, pause_ms=think_ms(64, rate))
        _wait_drained(spool, 600)
    finally:
        _stop(process)

    starts: dict[str, float] = {}
    for line in record.read_text().splitlines():
        event_id, moment = line.split()
        starts.setdefault(event_id, float(moment))  # a retry would be a second line
    everything = spool.received()
    full = _Phase(first, starts, seconds)
    slow = _Phase(
        {event_id: at for event_id, at in everything.items() if at > mark}, starts, seconds
    )
    wrapped = (
        warm["requests"] + 64 >= 20_000
        or load["requests"] + 64 >= region
        or steady["requests"] + 64 >= region
    )
    return EndToEnd(
        calls_per_s=full.throughput(),
        load_calls_per_s=full.calls_per_s(),
        load_acks_per_s=load["rps"],
        load_backlog=full.backlog(),
        drain_calls_per_s=full.drained(),
        load_p50_ms=percentile(full.latencies(), 50),
        load_p99_ms=percentile(full.latencies(), 99),
        paced_rate=rate,
        paced_acks_per_s=steady["rps"],
        paced_calls_per_s=slow.calls_per_s(),
        paced_backlog=slow.backlog(),
        p50_ms=percentile(slow.latencies(), 50),
        p99_ms=percentile(slow.latencies(), 99),
        errors=int(warm["errors"] + load["errors"] + steady["errors"]),
        timeouts=int(warm["timeouts"] + load["timeouts"] + steady["timeouts"]),
        unhandled=sum(1 for event_id in everything if event_id not in starts),
        wrapped=int(wrapped),
    )


# --- start-up ----------------------------------------------------------------------------


def _examples_config(state: Path, port: int) -> Path:
    # The three example plugins with settings that let each of them start: notify needs
    # somewhere to post, comment_on_ready an API client. Neither is ever called here.
    return frameiod_config(
        state,
        port,
        extra=f"""
[frameio]
token = "bench-dummy-token"
[plugins.event_log]
path = "{state / "events.jsonl"}"
[plugins.notify]
webhook_url = "https://hooks.invalid/bench"
""",
    )


# The example plugins a start loads: named, so that another installed plugin (the tracing
# one, which has its own bench) does not change what is measured.
_EXAMPLES = ("comment_on_ready", "event_log", "notify")
# Their distributions, each a folder under plugins/.
_EXAMPLE_PACKAGES = ("frameiod-comment-on-ready", "frameiod-event-log", "frameiod-notify")


def operators_install(folder: Path) -> str:
    """A virtualenv at ``folder`` holding frameiod and the example plugins and nothing
    else, as an operator installs them; its interpreter.

    The start figures are taken there, not in the venv the bench runs in: that one also
    holds what the tests need, and a library imports some of it when it is present
    (httpcore imports trio, which the browser tests' selenium brings), so it would count in
    frameiod's idle RSS.
    """
    python = str(folder / "bin" / "python")
    packages = [BENCH.parent, *(BENCH.parent / "plugins" / name for name in _EXAMPLE_PACKAGES)]
    for command in (
        [sys.executable, "-m", "venv", str(folder)],
        [python, "-m", "pip", "install", "--quiet", *(f"--editable={p}" for p in packages)],
    ):
        # pip's output only if it fails: its warnings would break up the bench's report.
        done = subprocess.run(command, check=False, capture_output=True, text=True)  # noqa: S603
        if done.returncode:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
    return python


def measure_start(
    folder: Path, *, examples: bool, settle: float = 2.0, python: str = sys.executable
) -> dict[str, float]:
    """One start under ``python``: seconds from spawning ``frameiod run`` to READY=1, and
    RSS once idle."""
    state = folder / ("start-examples" if examples else "start-bare")
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    config = _examples_config(state, port) if examples else frameiod_config(state, port)
    address = state / "notify.sock"
    env = {"NOTIFY_SOCKET": str(address)}
    log = state / "log.jsonl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, log.open("wb") as out:
        sock.bind(str(address))
        sock.settimeout(30)
        began = time.monotonic()
        process = start_frameiod(
            config,
            env,
            plugins=",".join(_EXAMPLES) if examples else "",
            python=python,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready = time.monotonic() - began
            time.sleep(settle)
            rss = proc_status(process.pid, "VmRSS") / 1024
        finally:
            _stop(process)
    loaded: list[str] = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "listening":
                loaded = entry.get("plugins", [])
    expected = list(_EXAMPLES) if examples else []
    if sorted(loaded) != expected:
        raise RuntimeError(f"plugins loaded: {loaded}, expected {expected}; see {log}")
    return {"ready_s": ready, "idle_rss_mib": rss}


def measure_starts(folder: Path, starts: int) -> dict[str, dict[str, float]]:
    """Median of ``starts`` starts, with the example plugins and without plugins, in an
    operator's install (`operators_install`)."""
    python = operators_install(folder / "installed")
    results = {}
    for examples in (True, False):
        runs = [measure_start(folder, examples=examples, python=python) for _ in range(starts)]
        results["example_plugins" if examples else "no_plugins"] = {
            key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]
        }
    return results


# --- profile -----------------------------------------------------------------------------


def _package(frame: str) -> str:
    """``f (aiohttp/web_protocol.py:446)`` → ``aiohttp``, ``f (hmac.py:67)`` → ``hmac.py``."""
    where = frame.rpartition(" (")[2]
    return where.split("/")[0] if "/" in where else where.rsplit(":", 1)[0]


def _top_frames(raw: Path, limit: int = 20) -> str:
    """The hottest frames of py-spy's collapsed stacks: per thread, per package (own
    samples), own samples per function, and total samples per frameiod function."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        number = int(count)
        thread, *frames = stack.split(";")
        samples += number
        threads[re.sub(r"\(\d+\): ", "", thread)] += number
        if not frames:
            continue
        own[frames[-1]] += number
        packages[_package(frames[-1])] += number
        for frame in set(frames):
            if "(frameiod/" in frame:
                total[frame] += number

    def block(title: str, counts: collections.Counter[str], top: int) -> list[str]:
        return ["", title] + [
            f"{100 * n / samples:5.1f}%  {name}" for name, n in counts.most_common(top)
        ]

    lines = [f"{samples} samples"]
    lines += block("by thread:", threads, limit)
    lines += block("own samples by package (the frame itself was running):", packages, limit)
    lines += block("own samples by function:", own, limit)
    lines += block("total samples of frameiod functions (on the stack):", total, limit)
    return "\n".join(lines) + "\n"


def profile(folder: Path, seconds: int) -> int:
    """py-spy flame graph of frameiod (FULL, no plugins) under wrk at 64 connections, and
    the hottest frames: every thread's samples, then only those holding the GIL."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    svg, text = BENCH / "profile-ingest.svg", BENCH / "profile-ingest.txt"
    runs = [
        (svg, ["--format", "flamegraph"]),
        (folder / "threads.txt", ["--format", "raw", "--function"]),
        (folder / "gil.txt", ["--format", "raw", "--function", "--gil"]),
    ]
    # Distinct requests for every load (at most 10,000/s) and a warm-up before each.
    per_run = 10_000 * (seconds + 1)
    script = folder / "requests.lua"
    write_script(script, count=per_run * len(runs))
    port = free_port()
    process = _serve("frameiod-full", port, folder, contextlib.ExitStack()).process
    rates = []
    try:
        wait_listening(port, process)
        url = f"http://127.0.0.1:{port}"
        for number, (output, options) in enumerate(runs):
            _wrk(url, script, 64, 1, start=number * per_run)
            command = [spy, "record", "--threads", *options, "--output", str(output)]
            command += ["--duration", str(seconds), "--pid", str(process.pid)]
            spying = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
            time.sleep(1)  # let py-spy attach before the load starts
            figures = _wrk(url, script, 64, seconds - 2, start=number * per_run + 10_000)
            if spying.wait(seconds + 30) != 0:
                raise RuntimeError("py-spy failed")
            rates.append(figures["rps"])
    finally:
        _stop(process)
    text.write_text(
        f"py-spy record, {seconds} s per run, of frameiod run (synchronous = FULL, no plugins)"
        f" under wrk at 64 connections, {time.strftime('%Y-%m-%d')}; req/s while sampled: "
        f"{', '.join(f'{r:.0f}' for r in rates)} (py-spy pauses the process to sample).\n"
        "profile-ingest.svg is the first run: every thread, by line. Below, by function:\n"
        "\n== every thread (waits with the GIL released, e.g. fsync in commit, count too) ==\n"
        + _top_frames(folder / "threads.txt")
        + "\n== only samples holding the GIL (where the one core's Python time goes) ==\n"
        + _top_frames(folder / "gil.txt")
    )
    print(f"wrote {svg} and {text}")
    print(text.read_text())
    return 0


# --- report ------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> float:
    return round(value / base, 3) if base else math.nan


def bound(ingest: float, drain: float) -> float:
    """Handler calls/s end to end if accepting (``ingest`` req/s alone) and handling
    (``drain`` calls/s alone) took turns on the one core without slowing each other: the
    most this shape of daemon can do. 1 / (1/ingest + 1/drain), written so that a part
    that did nothing gives 0."""
    return _ratio(ingest * drain, ingest + drain)


# Ingest with the Redis backend too, where redis-server and redis-py are installed (make
# bench installs both).
TARGETS = ["baseline", "frameiod-full", "frameiod-normal"] + (
    ["frameiod-redis"] if REDIS_SERVER and importlib.util.find_spec("redis") else []
)
# frameiod with its spool's SQL replaced by one append and fdatasync per batch (floor.py):
# the least a durable acknowledgement costs here, for reading frameiod-full's figures by.
TARGETS.append("durable-floor")
# End to end: the SQLite spool at both settings, and Redis where the ingest target runs.
E2E_TARGETS = ["frameiod-full", "frameiod-normal"] + [t for t in TARGETS if t == "frameiod-redis"]
# Each ingest figure of the other targets also as a ratio to the baseline's: the ratios
# are what carries over between machines and runs.
RATIOS = {
    "rps_ratio": "rps_64_connections",
    "p50_ratio": "p50_ms_8_connections",
    "p99_ratio": "p99_ms_8_connections",
    "rss_ratio": "peak_rss_mib",
    "cpu_64_ratio": "cpu_us_per_request_64_connections",
    "cpu_8_ratio": "cpu_us_per_request_8_connections",
}


@dataclass
class Collected:
    """Every figure of a run, before medians."""

    results: dict[str, list[Round]]
    ends: dict[str, list[EndToEnd]]
    pairs: list[dict[str, float]]
    starts: dict[str, dict[str, float]]
    disk: dict[str, float]


def collect(args: argparse.Namespace) -> Collected:
    """Every load of every round, then the starts; first, the disk's fsync."""
    results: dict[str, list[Round]] = {target: [] for target in TARGETS}
    ends: dict[str, list[EndToEnd]] = {target: [] for target in E2E_TARGETS}
    pairs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="frameiod-bench-") as scratch:
        folder = Path(scratch)
        disk = measure_fsync(folder)
        print(
            f"disk: 16 KiB appended + fdatasync: p50 {disk['p50_ms']:.3f} ms, "
            f"p99 {disk['p99_ms']:.3f} ms, {disk['cpu_us']:.0f} µs CPU per call",
            flush=True,
        )
        script = folder / "requests.lua"
        # More distinct requests than frameiod answers in one load, plus a tail for the
        # warm-up: it never sees a request twice (the baseline does not care).
        measured = 20_000 * args.seconds
        e2e_script = folder / "e2e.lua"
        pair_script = folder / "pair.lua"
        region = 0
        for number in range(args.rounds):
            # Signed afresh for every round and every end-to-end load: a request older than
            # the source's tolerance (5 minutes) would be refused as stale.
            write_script(script, count=measured + 20_000)
            for target in TARGETS:
                figures = measure(target, folder, args.seconds, script, warm_up_at=measured)
                results[target].append(figures)
                print(
                    f"round {number + 1} {target:16} {figures.rps_64:9.0f} req/s  "
                    f"p50 {figures.p50_ms_8:6.2f} ms  p99 {figures.p99_ms_8:6.2f} ms  "
                    f"errors {figures.errors}  rss {figures.peak_rss_mib:.0f} MiB  "
                    f"cpu/req {figures.cpu_us_64:.0f} µs (loop {figures.loop_us_64:.0f}) at 64, "
                    f"{figures.cpu_us_8:.0f} µs (loop {figures.loop_us_8:.0f}) at 8",
                    flush=True,
                )
            if not region:
                # Two loads' worth of requests (full speed, paced) and a warm-up tail, sized
                # from frameiod's ingest just measured with room to spare; `wrapped` says if
                # wrk ever came round to a request again all the same.
                fastest = max(r.rps_64 for t in TARGETS[1:3] for r in results[t])
                region = int(fastest * 1.5 * args.e2e_seconds) + 10_000
            for target in E2E_TARGETS:
                paced = write_script(e2e_script, count=2 * region + 20_000)
                end = measure_e2e(
                    "FULL" if target == "frameiod-redis" else target[len("frameiod-") :].upper(),
                    folder,
                    e2e_script,
                    paced,
                    seconds=args.e2e_seconds,
                    region=region,
                    workers=args.workers,
                    redis=target == "frameiod-redis",
                )
                ends[target].append(end)
                print(
                    f"round {number + 1} e2e {target:12} {end.calls_per_s:6.0f} calls/s; "
                    f"under full load {end.load_calls_per_s:.0f} calls/s, "
                    f"{end.load_acks_per_s:.0f} acks/s, backlog {end.load_backlog} "
                    f"drained at {end.drain_calls_per_s:.0f}/s; "
                    f"paced at {end.paced_rate:.0f}/s: {end.paced_calls_per_s:.0f} calls/s, "
                    f"backlog {end.paced_backlog}, receipt->start p50 {end.p50_ms:.1f} ms "
                    f"p99 {end.p99_ms:.1f} ms; errors {end.errors} (timeouts {end.timeouts}), "
                    f"unhandled {end.unhandled}, wrapped {end.wrapped}",
                    flush=True,
                )
            if "frameiod-redis" in TARGETS:
                spread = 12_000 * args.seconds
                write_script(pair_script, count=4 * spread)
                pair = scaleout.measure_pair(folder, pair_script, args.seconds, spread)
                pairs.append(pair)
                print(
                    f"round {number + 1} frameiod-redis-x2 {pair['rps']:9.0f} req/s  "
                    f"p99 {pair['p99_ms']:6.2f} ms (64 connections)  errors {pair['errors']:.0f}",
                    flush=True,
                )
        starts = measure_starts(folder, args.starts)
        for name, figures in starts.items():
            print(
                f"start {name:16} ready {figures['ready_s']:.3f} s  "
                f"idle rss {figures['idle_rss_mib']:.1f} MiB",
                flush=True,
            )
    return Collected(results, ends, pairs, starts, disk)


def summarise(args: argparse.Namespace, collected: Collected) -> dict[str, object]:
    """Medians, ratios to the baseline and the issue's targets, as results.json holds them."""
    results, ends, pairs = collected.results, collected.ends, collected.pairs
    starts, disk = collected.starts, collected.disk

    def median(target: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[target])

    targets = {
        target: {
            "rps_64_connections": median(target, "rps_64"),
            "p50_ms_8_connections": median(target, "p50_ms_8"),
            "p99_ms_8_connections": median(target, "p99_ms_8"),
            "peak_rss_mib": median(target, "peak_rss_mib"),
            "cpu_us_per_request_64_connections": median(target, "cpu_us_64"),
            "loop_us_per_request_64_connections": median(target, "loop_us_64"),
            "cpu_us_per_request_8_connections": median(target, "cpu_us_8"),
            "loop_us_per_request_8_connections": median(target, "loop_us_8"),
            "redis_us_per_request_64_connections": median(target, "redis_us_64"),
            "wrk_us_per_request_64_connections": median(target, "wrk_us_64"),
            "errors": sum(r.errors for r in results[target]),
        }
        for target in TARGETS
    }
    base = targets["baseline"]
    for target in TARGETS[1:]:
        figures = targets[target]
        for ratio, figure in RATIOS.items():
            figures[ratio] = _ratio(figures[figure], base[figure])
    end_to_end = {}
    for target in E2E_TARGETS:
        figures = {
            key: round(statistics.median(getattr(e, key) for e in ends[target]), 3)
            for key in asdict(ends[target][0])
        }
        for key in ("errors", "timeouts", "unhandled"):
            figures[key] = sum(getattr(e, key) for e in ends[target])
        figures["wrapped"] = sum(e.wrapped for e in ends[target])
        figures["seconds"] = args.e2e_seconds
        figures["workers"] = args.workers or DispatchConfig.model_fields["workers"].default
        figures["calls_ratio"] = _ratio(figures["calls_per_s"], base["rps_64_connections"])
        figures["bound_calls_per_s"] = bound(
            targets[target]["rps_64_connections"], figures["drain_calls_per_s"]
        )
        figures["bound_ratio"] = _ratio(figures["bound_calls_per_s"], base["rps_64_connections"])
        end_to_end[target] = figures
    scale_out: dict[str, float] = {}
    if pairs:
        pair = {key: statistics.median(p[key] for p in pairs) for key in pairs[0]}
        pair["errors"] = sum(p["errors"] for p in pairs)
        scale_out = {
            **scaleout.model(targets["frameiod-redis"], pair),
            "two_receivers_rps_ratio": _ratio(pair["rps"], base["rps_64_connections"]),
            "two_receivers_p99_ms": pair["p99_ms"],
            "errors": pair["errors"],
        }
    full, full_e2e = targets["frameiod-full"], end_to_end["frameiod-full"]
    examples = starts["example_plugins"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "pinned": TWO_CORES,
        "targets": targets,
        "end_to_end": end_to_end,
        "scale_out": scale_out,
        "start": {**starts, "starts": args.starts},
        "disk_fsync": disk,
        "issue_targets": {
            "ingest_full_rps_ratio >= 0.5": full["rps_ratio"] >= 0.5,
            "ingest_full_p99_ratio <= 2": full["p99_ratio"] <= 2,
            "e2e_full_calls_ratio >= 0.5": full_e2e["calls_ratio"] >= 0.5,
            **_redis_targets(targets, full),
            "idle_rss_mib <= 60": examples["idle_rss_mib"] <= 60,
            "ready_s <= 1": examples["ready_s"] <= 1,
        },
    }


def _redis_targets(targets: dict[str, Any], full: dict[str, Any]) -> dict[str, bool]:
    redis = targets.get("frameiod-redis")
    if redis is None:
        return {}
    p99_over_full = redis["p99_ms_8_connections"] / full["p99_ms_8_connections"]
    return {
        "ingest_redis_rps_ratio >= 0.5": redis["rps_ratio"] >= 0.5,
        "ingest_redis_p99 <= 2 x ingest_full_p99": p99_over_full <= 2,
    }


def report(summary: dict[str, Any]) -> int:
    """Print docs/performance.md's tables; 1 if any load was invalid."""
    print(f"\n{summary['date']}, {summary['machine']}, server on CPU 0, wrk on CPU 1")
    print(
        "| target | req/s (64 conn.) | ÷ baseline | p50 ms (8 conn.) | ÷ baseline "
        "| p99 ms (8 conn.) | ÷ baseline | peak RSS MiB | ÷ baseline |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for target, f in summary["targets"].items():
        print(
            f"| {target} | {f['rps_64_connections']:.0f} | {f.get('rps_ratio', 1):.2f} | "
            f"{f['p50_ms_8_connections']:.2f} | {f.get('p50_ratio', 1):.2f} | "
            f"{f['p99_ms_8_connections']:.2f} | {f.get('p99_ratio', 1):.2f} | "
            f"{f['peak_rss_mib']:.0f} | {f.get('rss_ratio', 1):.2f} |"
        )
    full, floor = summary["targets"]["frameiod-full"], summary["targets"]["durable-floor"]
    over_floor = _ratio(full["p99_ms_8_connections"], floor["p99_ms_8_connections"])
    print(
        f"\np99 at 8 connections: the durable floor's is {floor['p99_ratio']:.2f} times the "
        f"baseline's; frameiod-full's is {over_floor:.2f} times the floor's."
    )
    print(
        "\nCPU time per request, every thread of the server (of which its event loop), µs:\n"
        "| target | 64 conn. | ÷ baseline | 8 conn. | ÷ baseline |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for target, f in summary["targets"].items():
        print(
            f"| {target} | {f['cpu_us_per_request_64_connections']:.0f} "
            f"({f['loop_us_per_request_64_connections']:.0f}) | "
            f"{f.get('cpu_64_ratio', 1):.2f} | "
            f"{f['cpu_us_per_request_8_connections']:.0f} "
            f"({f['loop_us_per_request_8_connections']:.0f}) | "
            f"{f.get('cpu_8_ratio', 1):.2f} |"
        )
    disk = summary["disk_fsync"]
    print(
        f"\nThe disk: 16 KiB appended and fdatasync'ed takes {disk['p50_ms']:.2f} ms at the "
        f"median, {disk['p99_ms']:.2f} ms at p99, and {disk['cpu_us']:.0f} µs of CPU."
    )
    seconds = summary["end_to_end"]["frameiod-full"]["seconds"]
    print(
        f"\nEnd to end, no-op handler: wrk at 64 connections for {seconds} s at full speed, "
        "then paced at 80 % of what that achieved end to end:\n"
        "| spool | handler calls/s end to end | ÷ baseline req/s | under full load: calls/s "
        "| acks/s | paced: calls/s | receipt→start p50 ms | p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for target, f in summary["end_to_end"].items():
        print(
            f"| {target} | {f['calls_per_s']:.0f} | {f['calls_ratio']:.2f} | "
            f"{f['load_calls_per_s']:.0f} | {f['load_acks_per_s']:.0f} | "
            f"{f['paced_calls_per_s']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} |"
        )
    print(
        "\nAfter the full-speed load, its backlog drained (nothing arriving) at, calls/s: "
        + ", ".join(
            f"{target} {f['drain_calls_per_s']:.0f}" for target, f in summary["end_to_end"].items()
        )
        + ". Accepting at the ingest rate and handling at that rate, one after the other on "
        "the one core, would give at most: "
        + ", ".join(
            f"{target} {f['bound_calls_per_s']:.0f} ({f['bound_ratio']:.2f} times the baseline)"
            for target, f in summary["end_to_end"].items()
        )
        + "."
    )
    if model := summary["scale_out"]:
        print(
            "\nScale-out on Redis, from the frameiod-redis load's parts: a receiver spends "
            f"{model['receiver_us_per_event']:.0f} µs of CPU per event and Redis "
            f"{model['redis_us_per_event']:.0f} µs, so one Redis core takes "
            f"{model['one_redis_core_events_per_s']:,} events/s: "
            f"{model['receivers_one_redis_serves']:.1f} receivers of "
            f"{model['one_receiver_rps']:,} req/s each, on machines of their own. Two "
            f"receivers here (sharing two cores with Redis and wrk): predicted "
            f"{model['two_receivers_here_predicted_rps']:,} req/s, measured "
            f"{model['two_receivers_here_measured_rps']:,} "
            f"({model['measured_over_predicted']:.2f} of the prediction, "
            f"{model['two_receivers_rps_ratio']:.2f} times the baseline), "
            f"p99 {model['two_receivers_p99_ms']:.2f} ms at 64 connections."
        )
    starts = summary["start"]
    print(f"\nStart, median of {starts['starts']}:\n| plugins | start → READY=1 s | idle RSS MiB |")
    print("| --- | --- | --- |")
    for name in ("example_plugins", "no_plugins"):
        f = starts[name]
        print(f"| {name.replace('_', ' ')} | {f['ready_s']:.2f} | {f['idle_rss_mib']:.1f} |")
    print("\nTargets (issues 7 and 23):")
    for name, met in summary["issue_targets"].items():
        print(f"  {'met   ' if met else 'MISSED'}  {name}")
    invalid = [t for t, f in summary["targets"].items() if f["errors"]]
    invalid += [
        t for t, f in summary["end_to_end"].items() if f["errors"] or f["unhandled"] or f["wrapped"]
    ]
    if summary["scale_out"].get("errors"):
        invalid.append("frameiod-redis-x2")
    if invalid:
        print(
            "INVALID: non-2xx answers, socket errors, unhandled events or repeated requests in "
            + ", ".join(invalid),
            file=sys.stderr,
        )
        return 1
    return 0


def main() -> int:
    """Run the rounds and report; exit 1 if any load was invalid."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per ingest load")
    parser.add_argument("--e2e-seconds", type=int, default=30, help="per end-to-end load")
    parser.add_argument("--starts", type=int, default=5, help="starts for idle RSS and READY")
    parser.add_argument(
        "--workers",
        type=int,
        help="[dispatch] workers for the end-to-end loads (default: frameiod's)",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    parser.add_argument(
        "--profile", action="store_true", help="only record bench/profile-ingest.svg"
    )
    parser.add_argument("--profile-seconds", type=int, default=15)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 1
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="frameiod-bench-") as scratch:
            return profile(Path(scratch), args.profile_seconds)
    summary = summarise(args, collect(args))
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    return report(summary)


if __name__ == "__main__":
    raise SystemExit(main())
