"""A real ``redis-server`` for the tests and the bench (Debian's package; ``make test`` and
``make bench`` install it). No pytest here: ``bench/run.py`` imports it too."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a free loopback port, its data (AOF, ``appendfsync always``) in
    ``directory``; `stop` and `start` again keep the port and the data."""

    def __init__(
        self, directory: Path, *, appendfsync: str = "always", prefix: Sequence[str] = ()
    ) -> None:
        """``prefix`` goes before the command (the bench pins Redis to a core with it)."""
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.directory = directory
        self.prefix = list(prefix)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The URL frameiod's config takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                *self.prefix,
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server did not start:\n{log[-2000:]}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it finishes its AOF) or, with ``kill``, SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(15)
        self.process = None


def redis_spool_lines(url: str, prefix: str | None = None) -> str:
    """The ``[spool]`` lines of a config whose spool is on Redis at ``url`` (under
    ``prefix``, if given): what `frameiod.testing.config_toml` takes as ``spool``."""
    lines = f'backend = "redis"\nredis_url = "{url}"'
    return lines + (f'\nstream_prefix = "{prefix}"' if prefix is not None else "")
