"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import structlog
from redis_support import RedisServer

from frameiod.idle import new_event_loop


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the event loop the daemon runs on (`frameiod.idle`), so
    the spool's idle hand-over is what the tests exercise. (pytest-asyncio's hook, since
    1.4: the test extra requires it.)"""
    return {"frameiod": new_event_loop}


@pytest.fixture(autouse=True, scope="session")
def _no_config_path_from_the_environment() -> Iterator[None]:
    """A $FRAMEIOD_CONFIG the developer exported must not choose the config of what the
    tests run (in process or as subprocesses, which inherit the environment)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FRAMEIOD_CONFIG", raising=False)
        yield


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults and no bound context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test module; each test keeps to a key prefix of its own.
    (Tests that stop or kill Redis start their own.)"""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
