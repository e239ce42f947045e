"""Helpers the tests share: configs on disk, signed requests, Frame.io-shaped bodies.

Every config a test writes is built by `config_toml` (from `frameiod.testing`, where
plugin authors get it too) and written by `write_config`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from frameiod import idle
from frameiod.config import Config, load_config
from frameiod.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from frameiod.store.base import Incoming, SpoolBackend
from frameiod.testing import config_toml

SECRET = "test-secret-0123456789"
# The [log] table of a daemon whose lines a test reads (`DaemonProcess`).
JSON_LOG = 'format = "json"'

# The console script of the environment running the tests, so a subprocess runs this checkout.
FRAMEIOD = [str(Path(sys.executable).with_name("frameiod"))]

SAMPLE_EVENT: dict[str, Any] = {
    "type": "file.ready",
    "account": {"id": "aaaaaaaa-0000-0000-0000-000000000001"},
    "workspace": {"id": "bbbbbbbb-0000-0000-0000-000000000002"},
    "project": {"id": "cccccccc-0000-0000-0000-000000000003"},
    "resource": {"id": "dddddddd-0000-0000-0000-000000000004", "type": "file"},
    "user": {"id": "eeeeeeee-0000-0000-0000-000000000005"},
}

# What a sender can put in a signed event's type, and a handler in its error: an escape that
# recolours the terminal and a line break that forges a row of a table. Then the same as an
# operator's command must print them.
HOSTILE_TYPE, HOSTILE_TYPE_SHOWN = "a\x1b[31m\r\nB", "a\\x1b[31m\\r\\nB"
HOSTILE_ERROR, HOSTILE_ERROR_SHOWN = "boom\x1b[2J\r\nFORGED", "boom\\x1b[2J\\r\\nFORGED"
HOSTILE_HANDLER, HOSTILE_HANDLER_SHOWN = "h:\x1b[1m", "h:\\x1b[1m"


async def assert_hostile_text_escaped(spool: SpoolBackend, config: Path) -> None:
    """Bury one event of HOSTILE_TYPE in ``spool`` (then closed), dead at HOSTILE_HANDLER with
    HOSTILE_ERROR, and check that ``frameiod queue list`` and ``stats`` on ``config`` show
    every hostile character escaped, nothing a terminal would act on, and no forged row."""
    event = incoming(event_type=HOSTILE_TYPE)
    try:
        await spool.accept(event, [HOSTILE_HANDLER])
        [claimed] = await spool.claim(10, {HOSTILE_HANDLER: 10})
        await spool.finish(
            claimed.delivery_id, outcome="error", seconds=0.1, error=HOSTILE_ERROR, dead=True
        )
    finally:
        await spool.close()
    listing, stats = [
        await asyncio.to_thread(run_cli, "queue", verb, "--config", str(config))
        for verb in ("list", "stats")
    ]
    assert (listing.returncode, stats.returncode) == (0, 0), listing.stderr + stats.stderr
    _assert_escaped_listing(listing.stdout, stats.stdout, event.id)


def _assert_escaped_listing(listing: str, stats: str, event_id: str) -> None:
    for output in (listing, stats):
        assert not any(char in output for char in "\x1b\r"), repr(output)
    header, row = listing.splitlines()
    assert header.split()[:3] == ["DELIVERY", "EVENT", "TYPE"]
    assert event_id in row
    assert f"  {HOSTILE_TYPE_SHOWN}  " in row
    assert f"  {HOSTILE_HANDLER_SHOWN}  " in row
    assert row.endswith(f"  {HOSTILE_ERROR_SHOWN}")
    assert f"  {HOSTILE_HANDLER_SHOWN}: dead 1" in stats.splitlines()


BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py as ``python bench/NAME.py`` imports it, as module ``bench_NAME``: its
    folder first on the path only while it is imported, and the bench modules it imported
    by their plain names (``run``) forgotten again, since bench/ holds names the other tests
    must not see."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
        for sibling in BENCH.glob("*.py"):
            sys.modules.pop(sibling.stem, None)
    return module


def event_body(event_type: str = "file.ready", **overrides: Any) -> bytes:
    """A Frame.io-shaped webhook body as raw bytes."""
    return json.dumps({**SAMPLE_EVENT, "type": event_type, **overrides}).encode()


def incoming(
    body: bytes | None = None, *, event_type: str = "file.ready", **changes: Any
) -> Incoming:
    """A verified delivery as the server hands it to a spool: by default a body, signature
    and id of its own, signed the second it was received (``received_at``, default now)."""
    received_at = changes.pop("received_at", time.time())
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "source": "default",
        "type": event_type,
        "body": event_body(event_type, resource={"id": str(uuid.uuid4()), "type": "file"})
        if body is None
        else body,
        "timestamp": int(received_at),
        "signature": f"v0={uuid.uuid4().hex}",
        "secret_id": "0",
        "received_at": received_at,
    }
    return Incoming(**{**fields, **changes})


def signed_headers(
    body: bytes,
    secret: str = SECRET,
    timestamp: int | str | None = None,
    content_type: str | None = "application/json",
) -> dict[str, str]:
    """The headers Frame.io would send with ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, body, ts)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def write_config(
    directory: Path, text: str | None = None, *, name: str = "config.toml", port: int = 0
) -> Path:
    """Write ``text`` (dedented) to ``directory/name``, creating the folder; by default a
    `config_toml` with one source ``default`` signed with `SECRET`, JSON logs (what
    `DaemonProcess` reads), bodies up to 4 KiB, on ``port``. Returns the file's path."""
    if text is None:
        text = config_toml(
            secret=SECRET,
            port=port,
            server="max_body_bytes = 4096",
            log=JSON_LOG,
            source='tolerance = "5m"',
        )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_config(directory: Path, text: str | None = None) -> Config:
    """Write and load a config; see `write_config`."""
    return load_config(write_config(directory, text), environ={})


class DaemonProcess:
    """``frameiod run`` as a real subprocess, its JSON log lines collected as they arrive."""

    def __init__(
        self,
        config_path: Path,
        *,
        env: dict[str, str] | None = None,
        frameiod: Sequence[str] = tuple(FRAMEIOD),
        plugins: str | None = "",
    ) -> None:
        """Start ``frameiod run``; ``plugins`` is $FRAMEIOD_PLUGINS (None: every installed one).

        By default no plugin loads: the suite must not depend on what else is installed in
        its environment (make test installs the example plugins).
        """
        self.config_path = config_path
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        environ = {**os.environ, **(env or {})}
        environ.pop("FRAMEIOD_PLUGINS", None)
        if plugins is not None:
            environ["FRAMEIOD_PLUGINS"] = plugins
        self.process = subprocess.Popen(
            [*frameiod, "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.raw.append(line)
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first log line matching ``predicate``, waiting for it up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        "no matching log line; the daemon said:\n" + "".join(self.raw)
                    )
                self._changed.wait(remaining)

    def wait_for(self, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first log line with this ``event`` and these field values, waiting for it."""
        return self.wait_for_log(
            lambda line: (
                line.get("event") == event
                and all(line.get(key) == value for key, value in fields.items())
            ),
            timeout,
        )

    def logs(self, event: str) -> list[dict[str, Any]]:
        """Every log line collected so far whose ``event`` is ``event``."""
        with self._changed:
            return [line for line in self.lines if line.get("event") == event]

    @property
    def port(self) -> int:
        """The port the daemon is listening on (waits for the ``listening`` line)."""
        return int(self.wait_for("listening")["port"])

    def url(self, path: str = "/webhooks/default") -> str:
        """An absolute URL on this daemon."""
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape ``/metrics``: ``{(sample name, sorted label pairs): value}``, as
        `frameiod.testing.RunningDaemon.metrics` does in-process."""
        text = httpx.get(self.url("/metrics"), timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the daemon and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the daemon to exit and all its output to be read."""
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        return status

    def kill(self) -> None:
        """Make sure the process is gone (fixture teardown)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


T = TypeVar("T")


def on_the_daemons_loop(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario()`` to its end on the kind of event loop `frameiod run` uses."""
    with asyncio.Runner(loop_factory=idle.new_event_loop) as runner:
        return runner.run(scenario())


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true; fail the test if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``frameiod ARGS`` to completion, capturing its output (no plugins unless ``env``
    sets ``FRAMEIOD_PLUGINS``)."""
    return subprocess.run(
        [*FRAMEIOD, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
        env={**os.environ, "FRAMEIOD_PLUGINS": "", **(env or {})},
    )


def install_plugin(site: Path, name: str, code: str) -> dict[str, str]:
    """Make ``code`` an installed frameiod plugin named ``name`` for a subprocess.

    Writes the module and a ``.dist-info`` with its entry point into ``site``: the real
    entry-point discovery finds it once ``site`` is on the subprocess's PYTHONPATH, which
    the returned environment sets. The module must define ``app``.
    """
    site.mkdir(parents=True, exist_ok=True)
    module = f"frameiod_test_{name}"
    (site / f"{module}.py").write_text(code)
    dist = site / f"{module}-0.0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[frameiod.plugins]\n{name} = {module}:app\n")
    return {"PYTHONPATH": str(site)}
