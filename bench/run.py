"""``make bench``: frameiod's ingest side by side with the limit of its stack.

Starts, one after the other on 127.0.0.1, the minimal aiohttp server of ``baseline.py``
and ``frameiod run`` with the spool at ``synchronous = FULL`` and ``NORMAL``; pins each
server to CPU 0 and wrk to CPU 1 when there are two cores. wrk cycles through freshly
signed, distinct requests (more than a round sends, so frameiod never answers from its
duplicate check). Three alternating rounds; the median of each figure is reported, and
frameiod's as a ratio to the baseline measured in the same run, since machines are noisy.

Writes ``bench/results.json`` and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SECRET = "bench-secret"  # noqa: S105 - a throwaway secret for loopback only
TWO_CORES = (os.cpu_count() or 1) >= 2
sys.path.insert(0, str(BENCH.parent))

from frameiod.signature import sign  # noqa: E402 - after the path tweak above


@dataclass
class Round:
    """One target's figures from one round."""

    rps_64: float
    p50_ms_8: float
    p99_ms_8: float
    errors: int
    peak_rss_mib: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if TWO_CORES and shutil.which("taskset") else []


def write_script(path: Path, count: int) -> None:
    """A wrk Lua script cycling through ``count`` distinct, freshly signed requests.

    The requests go to a data file beside it, one per line, which the script reads at start:
    Lua cannot compile a chunk holding that many constants.
    """
    now = str(int(time.time()))
    data = path.with_suffix(".tsv")
    with data.open("w") as out:
        for number in range(count):
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
            out.write(f"{now}\t{sign(SECRET, body, now)}\t{body.decode()}\n")
    # The script's argument is where to start, so a warm-up can use requests the measured
    # run will not reach.
    path.write_text(f"""
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
init = function(args)
  i = tonumber(args[1] or "0")
end
request = function()
  i = i % #requests + 1
  local r = requests[i]
  return wrk.format("POST", "/webhooks/default", r[1], r[2])
end
""")


def _wrk(
    url: str, script: Path, connections: int, seconds: int, start: int = 0
) -> dict[str, float]:
    command = [
        *_pin(1),
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
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    if "request = function" in done.stderr or "error" in done.stderr.lower():
        raise RuntimeError(f"wrk's script failed: {done.stderr.strip()}")
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match[1])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in match.groups())
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": errors}


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not start listening")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _serve(target: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    if target == "baseline":
        command = [sys.executable, str(BENCH / "baseline.py"), str(port), SECRET]
        env = os.environ.copy()
    else:
        synchronous = target.split("-")[1].upper()
        state = folder / target
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        config = state / "config.toml"
        config.write_text(f"""
[server]
port = {port}
max_body_bytes = 65536
[log]
format = "json"
[sources.default]
secrets = ["{SECRET}"]
[spool]
synchronous = "{synchronous}"
""")
        command = [sys.executable, "-m", "frameiod", "run", "--config", str(config)]
        env = {**os.environ, "FRAMEIOD_PLUGINS": ""}
    return subprocess.Popen(  # noqa: S603 - our own interpreter and files
        [*_pin(0), *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


def _load(
    target: str, folder: Path, script: Path, *, connections: int, seconds: int, warm_up_at: int
) -> tuple[dict[str, float], float]:
    """A fresh server (and spool) per load, so no request is ever seen twice."""
    port = _free_port()
    process = _serve(target, port, folder)
    try:
        _wait_listening(port, process)
        url = f"http://127.0.0.1:{port}"
        _wrk(url, script, connections, 1, start=warm_up_at)
        figures = _wrk(url, script, connections, seconds)
        rss = _peak_rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
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
    )


def main() -> int:
    """Run the rounds and report; exit 1 if any run had a non-2xx answer or socket error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 1

    targets = ["baseline", "frameiod-full", "frameiod-normal"]
    results: dict[str, list[Round]] = {target: [] for target in targets}
    with tempfile.TemporaryDirectory(prefix="frameiod-bench-") as scratch:
        folder = Path(scratch)
        script = folder / "requests.lua"
        # More distinct requests than frameiod answers in one load, plus a tail for the
        # warm-up: it never sees a request twice (the baseline does not care).
        measured = 20_000 * args.seconds
        write_script(script, count=measured + 20_000)
        for number in range(args.rounds):
            for target in targets:
                figures = measure(target, folder, args.seconds, script, warm_up_at=measured)
                results[target].append(figures)
                print(
                    f"round {number + 1} {target:16} {figures.rps_64:9.0f} req/s  "
                    f"p50 {figures.p50_ms_8:6.2f} ms  p99 {figures.p99_ms_8:6.2f} ms  "
                    f"errors {figures.errors}  rss {figures.peak_rss_mib:.0f} MiB",
                    flush=True,
                )

    def median(target: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[target])

    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "pinned": TWO_CORES,
        "targets": {
            target: {
                "rps_64_connections": median(target, "rps_64"),
                "p50_ms_8_connections": median(target, "p50_ms_8"),
                "p99_ms_8_connections": median(target, "p99_ms_8"),
                "peak_rss_mib": median(target, "peak_rss_mib"),
                "errors": sum(r.errors for r in results[target]),
            }
            for target in targets
        },
    }
    base = summary["targets"]["baseline"]
    for target in targets[1:]:
        figures = summary["targets"][target]
        figures["rps_ratio"] = round(figures["rps_64_connections"] / base["rps_64_connections"], 3)
        figures["p99_ratio"] = round(
            figures["p99_ms_8_connections"] / base["p99_ms_8_connections"], 3
        )
    args.output.write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\n{summary['date']}, {summary['machine']}, server on CPU 0, wrk on CPU 1")
    print(
        "| target | req/s (64 conn.) | ÷ baseline | p50 ms (8 conn.) | p99 ms (8 conn.) "
        "| p99 ÷ baseline | peak RSS MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for target in targets:
        f = summary["targets"][target]
        print(
            f"| {target} | {f['rps_64_connections']:.0f} | {f.get('rps_ratio', 1):.2f} | "
            f"{f['p50_ms_8_connections']:.2f} | {f['p99_ms_8_connections']:.2f} | "
            f"{f.get('p99_ratio', 1):.2f} | {f['peak_rss_mib']:.0f} |"
        )
    invalid = [t for t in targets if summary["targets"][t]["errors"]]
    if invalid:
        print(f"INVALID: non-2xx answers or socket errors in {', '.join(invalid)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
