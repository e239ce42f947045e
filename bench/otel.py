"""What the frameiod-otel plugin costs: ingest and end to end, with and without it.

    .venv/bin/python bench/otel.py [--rounds 3] [--seconds 5] [--e2e-seconds 5]

Alternating rounds of `run.py`'s own loads, the baseline (bench/baseline.py) then frameiod
at ``synchronous = FULL``: ingest (requests/s at 64 connections, p50/p99 at 8, no
handler) and end to end (the no-op handler plugin), each without the plugin and with it,
exporting every span (``sample_ratio = 1.0``) to a local OTLP/HTTP sink on the load
generator's core. Prints the medians and the ratios for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import run  # bench/run.py, beside this file

SINK = """
import sys
from aiohttp import web

async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@contextlib.contextmanager
def otel_sink() -> Iterator[str]:
    """A local OTLP/HTTP receiver that takes every export and keeps nothing."""
    port = run.free_port()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [*run.pin(1), sys.executable, "-c", SINK, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run.wait_listening(port, process)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        run._stop(process)  # type: ignore[arg-type]


@contextlib.contextmanager
def traced(endpoint: str | None) -> Iterator[None]:
    """While active, every frameiod that `run.py` starts loads the otel plugin too."""
    if endpoint is None:
        yield
        return
    original: Callable[..., Any] = run.start_frameiod

    def start(config: Path, env: dict[str, str] | None = None, **options: Any) -> Any:
        table = f'\n[plugins.otel]\nendpoint = "{endpoint}"\nsample_ratio = 1.0\n'
        config.write_text(config.read_text() + table)
        plugins = options.pop("plugins", "")
        options["plugins"] = "otel" if not plugins else f"{plugins},otel"
        return original(config, env, **options)

    run.start_frameiod = start
    try:
        yield
    finally:
        run.start_frameiod = original


def main() -> int:
    """Alternate the loads without and with the plugin; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--e2e-seconds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {"without": {}, "with": {}}
    baseline: list[float] = []

    def note(variant: str, name: str, value: float) -> None:
        figures[variant].setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="frameiod-bench-otel-") as scratch, otel_sink() as sink:
        folder = Path(scratch)
        script, e2e = folder / "requests.lua", folder / "e2e.lua"
        measured = 20_000 * args.seconds
        region = 0
        for number in range(args.rounds):
            run.write_script(script, count=measured + 20_000)
            # The goal is read against bench/baseline.py measured in the same round.
            base = run.measure("baseline", folder, args.seconds, script, warm_up_at=measured)
            baseline.append(base.rps_64)
            print(f"round {number + 1} baseline ingest {base.rps_64:7.0f} req/s", flush=True)
            for variant, endpoint in (("without", None), ("with", sink)):
                with traced(endpoint):
                    ingest = run.measure(
                        "frameiod-full", folder, args.seconds, script, warm_up_at=measured
                    )
                    region = region or int(ingest.rps_64 * 1.5 * args.e2e_seconds) + 10_000
                    paced = run.write_script(e2e, count=2 * region + 20_000)
                    end = run.measure_e2e(
                        "FULL", folder, e2e, paced, seconds=args.e2e_seconds, region=region
                    )
                note(variant, "ingest req/s at 64", ingest.rps_64)
                note(variant, "ingest p50 ms at 8", ingest.p50_ms_8)
                note(variant, "ingest p99 ms at 8", ingest.p99_ms_8)
                note(variant, "ingest CPU µs/req at 64", ingest.cpu_us_64)
                note(variant, "e2e calls/s", end.calls_per_s)
                note(variant, "e2e receipt->start p50 ms (paced)", end.p50_ms)
                note(variant, "e2e receipt->start p99 ms (paced)", end.p99_ms)
                note(variant, "errors", ingest.errors + end.errors + end.unhandled)
                print(
                    f"round {number + 1} {variant:8} ingest {ingest.rps_64:7.0f} req/s "
                    f"p50 {ingest.p50_ms_8:.2f} ms p99 {ingest.p99_ms_8:.2f} ms; "
                    f"e2e {end.calls_per_s:6.0f} calls/s p50 {end.p50_ms:.1f} ms; "
                    f"errors {ingest.errors + end.errors + end.unhandled}",
                    flush=True,
                )
    print("\n| figure (median) | without otel | with otel | ratio |\n| --- | ---: | ---: | ---: |")
    for name, values in figures["without"].items():
        without = statistics.median(values)
        with_ = statistics.median(figures["with"][name])
        ratio = f"{with_ / without:.2f}" if without else "-"
        print(f"| {name} | {without:.2f} | {with_:.2f} | {ratio} |")
    base = statistics.median(baseline)
    with_otel = statistics.median(figures["with"]["ingest req/s at 64"])
    print(f"\nbaseline ingest {base:.0f} req/s; with otel {with_otel / base:.2f} x the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
