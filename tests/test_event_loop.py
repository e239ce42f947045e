"""Tests run on the event loop the daemon runs on in production (`frameiod.idle`): the
suite's own, and plugin authors' tests that use `frameiod.testing`'s `frameiod_daemon`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from frameiod.idle import call_when_idle

OPTIONS = ("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function")


async def test_the_suites_async_tests_run_on_the_daemons_loop() -> None:
    ran = asyncio.Event()
    # Only a loop made by frameiod.idle.new_event_loop takes an idle callback.
    assert call_when_idle(asyncio.get_running_loop(), ran.set, 1.0)
    await asyncio.wait_for(ran.wait(), 2)


def test_plugin_authors_tests_with_frameiod_daemon_run_on_the_daemons_loop(
    tmp_path: Path,
) -> None:
    """Outside this suite (no conftest of ours), `frameiod.testing` alone picks the loop
    for the tests that start a daemon, and leaves every other test's loop alone."""
    (tmp_path / "test_plugin.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            from frameiod.idle import call_when_idle

            async def test_with_a_daemon(frameiod_daemon):
                daemon = await frameiod_daemon()
                assert (await daemon.send("file.ready")).status == 202
                assert call_when_idle(asyncio.get_running_loop(), lambda: None, 1.0)

            async def test_without_a_daemon():
                assert not call_when_idle(asyncio.get_running_loop(), lambda: None, 1.0)
            """
        )
    )
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            *OPTIONS,
            "test_plugin.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 passed" in ran.stdout
