"""`frameiod run` speaks systemd's notify protocol: a real AF_UNIX socket as NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import DaemonProcess, write_config


class Listener:
    """The systemd side: a datagram socket collecting notifications."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)
        self.seen: list[str] = []

    def next(self) -> str:
        message = self.sock.recv(4096).decode()
        self.seen.append(message)
        return message

    def until(self, prefix: str) -> str:
        """Messages until one starts with ``prefix`` (watchdog pings in between)."""
        for _ in range(50):
            message = self.next()
            if message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix!r} among {self.seen}")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    notify = Listener(tmp_path / "notify.sock")
    yield notify
    notify.sock.close()


def test_ready_watchdog_reload_and_stop_are_announced(tmp_path: Path, listener: Listener):
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
    daemon = DaemonProcess(write_config(tmp_path), env=env)
    try:
        ready = listener.until("READY=1")
        # READY only once the port is bound: it accepts connections the moment we hear it.
        port = daemon.port
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert ready == f"READY=1\nSTATUS=listening on 127.0.0.1:{port}; 1 source(s), 0 plugin(s)"
        # Pings every 0.2 s (half of WATCHDOG_USEC), from the event loop.
        assert listener.until("WATCHDOG=1") == "WATCHDOG=1"
        assert listener.until("WATCHDOG=1") == "WATCHDOG=1"

        daemon.process.send_signal(signal.SIGHUP)
        reloading = listener.until("RELOADING=1")
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert listener.until("READY=1").startswith("READY=1\nSTATUS=listening on")

        daemon.process.send_signal(signal.SIGTERM)
        assert listener.until("STOPPING=1") == "STOPPING=1"
        assert daemon.wait() == 0
    finally:
        daemon.kill()


def test_without_notify_socket_nothing_is_sent_and_all_works(tmp_path: Path, listener: Listener):
    daemon = DaemonProcess(write_config(tmp_path))
    try:
        daemon.port  # noqa: B018 - waits for the listening line
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    listener.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        listener.next()
