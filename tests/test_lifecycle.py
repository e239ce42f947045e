"""The daemon's parts start in order as cleanup_ctx steps, and stop in reverse: whatever
started is stopped, even when starting fails halfway."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import write_config

from frameiod import hookimpl
from frameiod.config import load_config
from frameiod.daemon import Daemon
from frameiod.plugins.host import PluginHost, make_plugin_manager
from frameiod.store.base import SpoolUnavailable


class Recorder:
    """A plugin that notes its start-up and shutdown, and whether the spool was open then."""

    def __init__(self) -> None:
        self.daemon: Daemon | None = None
        self.calls: list[str] = []

    async def _spool_open(self) -> bool:
        assert self.daemon is not None
        try:
            await self.daemon.spool.check()
        except SpoolUnavailable:
            return False
        return True

    @hookimpl
    async def frameiod_startup(self, context: object) -> None:
        self.calls.append(f"startup, spool open: {await self._spool_open()}")

    @hookimpl
    async def frameiod_shutdown(self, context: object) -> None:
        self.calls.append(f"shutdown, spool open: {await self._spool_open()}")


async def _daemon(tmp_path: Path, port: int) -> tuple[Daemon, Recorder]:
    config = load_config(write_config(tmp_path, port=port), environ={})
    recorder = Recorder()
    host = PluginHost(make_plugin_manager(load_entrypoints=False))
    host.add(recorder, "recorder")
    host.configure(config)
    recorder.daemon = Daemon(config, host)
    return recorder.daemon, recorder


async def test_a_daemon_that_cannot_listen_stops_every_part_it_started(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon, recorder = await _daemon(tmp_path, taken.getsockname()[1])
        with pytest.raises(OSError, match="already in use"):
            await daemon.start()
    # The plugins stopped before the spool closed, and the spool is closed.
    assert recorder.calls == ["startup, spool open: True", "shutdown, spool open: True"]
    with pytest.raises(SpoolUnavailable):
        await daemon.spool.check()


async def test_a_stopped_daemon_stops_its_parts_in_reverse_order(tmp_path: Path):
    daemon, recorder = await _daemon(tmp_path, 0)
    await daemon.start()
    assert daemon.receiver.ready
    await daemon.stop()
    assert not daemon.receiver.ready
    assert recorder.calls == ["startup, spool open: True", "shutdown, spool open: True"]
    assert daemon.dispatcher.running == 0
    with pytest.raises(SpoolUnavailable):
        await daemon.spool.check()
