"""Receivers sharing one Redis: a load of two receivers on this machine, and the scale-out
model built from one receiver's measured parts (`bench/run.py` runs both).

The model: a receiver spends ``receiver_us`` of CPU per accepted event and its Redis
``redis_us`` (both read from /proc during the ``frameiod-redis`` load). One Redis core
then takes ``1e6 / redis_us`` events/s, so it serves that many divided by one receiver's
rate of receivers, each on a machine of its own, and N of them accept ``min(N x one receiver,
one Redis)``. On this machine two receivers, their Redis and the load generator share two
cores, so the model predicts ``2e6 / (receiver_us + redis_us + wrk_us)`` for two receivers;
`measure_pair` checks it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import run


def measure_pair(folder: Path, script: Path, seconds: int, spread: int) -> dict[str, float]:
    """Two receivers on one fresh Redis, one pinned to each core, each loaded by its own
    wrk at 32 connections (64 in all) with requests of its own (``spread`` apart in
    ``script``); Redis and both wrk run wherever there is room. Accepted req/s in all, and
    the worse of the two p99s."""
    state = folder / "frameiod-redis-x2"
    with contextlib.ExitStack() as stack:
        redis = run._redis_server(state, stack, cpu=None)
        extra = f'backend = "redis"\nredis_url = "{redis.url}"'
        ports = [run.free_port(), run.free_port()]
        configs = [
            run.frameiod_config(state / f"receiver{n}", port, "FULL", extra)
            for n, port in enumerate(ports)
        ]
        processes = [run.start_frameiod(config, cpu=n) for n, config in enumerate(configs)]
        for process in processes:
            stack.callback(run._stop, process)
        for port, process in zip(ports, processes, strict=True):
            run.wait_listening(port, process)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        _both(urls, script, seconds=1, starts=[3 * spread, 3 * spread + spread // 2])
        loads = _both(urls, script, seconds=seconds, starts=[0, spread])
    return {
        "rps": sum(load["rps"] for load in loads),
        "p99_ms": max(load["p99"] for load in loads),
        "errors": sum(load["errors"] for load in loads),
    }


def _both(urls: list[str], script: Path, *, seconds: int, starts: list[int]) -> list[Any]:
    """One wrk per URL at 32 connections, at the same time."""
    loads: list[Any] = [None, None]

    def load(index: int) -> None:
        loads[index] = run._wrk(urls[index], script, 32, seconds, starts[index], cpu=None)

    threads = [threading.Thread(target=load, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if None in loads:
        raise RuntimeError("a wrk of the two-receiver load failed")
    return loads


def model(redis_target: dict[str, float], pair: dict[str, float]) -> dict[str, float]:
    """The scale-out model from the ``frameiod-redis`` target's medians, and how the
    two-receiver load measured here compares with its prediction."""
    one = redis_target["rps_64_connections"]
    receiver_us = redis_target["cpu_us_per_request_64_connections"]
    redis_us = redis_target["redis_us_per_request_64_connections"]
    wrk_us = redis_target["wrk_us_per_request_64_connections"]
    redis_capacity = 1e6 / redis_us
    predicted_here = min(2e6 / (receiver_us + redis_us + wrk_us), redis_capacity)
    return {
        "receiver_us_per_event": round(receiver_us, 1),
        "redis_us_per_event": round(redis_us, 1),
        "one_receiver_rps": round(one),
        "one_redis_core_events_per_s": round(redis_capacity),
        "receivers_one_redis_serves": round(redis_capacity / one, 1),
        "two_receivers_here_predicted_rps": round(predicted_here),
        "two_receivers_here_measured_rps": round(pair["rps"]),
        "measured_over_predicted": round(pair["rps"] / predicted_here, 3),
    }
