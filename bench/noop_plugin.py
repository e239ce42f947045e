"""The no-op handler plugin `make bench` and ``bench/soak.py`` run frameiod with.

Not installed in any environment: the harness copies this file into a scratch folder with
a ``.dist-info`` naming it as a ``frameiod.plugins`` entry point (`install`), puts that
folder on the daemon's PYTHONPATH, and lets frameiod's real entry-point discovery load it.

Every call records ``<event id> <time.time() at handler start>``, to ``$BENCH_RECORD``:

- by default kept in memory and written once at shutdown, so recording costs the daemon
  no syscall per call (`make bench`: throughput must not be measured with a write in it);
- with ``BENCH_RECORD_EACH=1``, one ``O_APPEND`` write per call before the handler returns,
  so the line is on its way to disk before frameiod marks the delivery done, and survives
  a SIGKILL of the daemon (``bench/soak.py``: nothing acknowledged may be lost).

Receipt-to-handler-start latency is the recorded start minus the spool's
``events.received_at`` (the same clock, ``time.time()``, taken by frameiod when it accepted
the request).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from frameiod import App, PluginContext, WebhookEvent

__all__ = ["MODULE", "NAME", "app", "install"]

NAME = "bench_noop"
MODULE = "frameiod_bench_noop"

app = App()

_RECORD = os.environ.get("BENCH_RECORD", "")
_EACH = os.environ.get("BENCH_RECORD_EACH") == "1"
_started: list[str] = []
_fd = os.open(_RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if _RECORD and _EACH else -1


@app.on_webhook("*")
async def noop(event: WebhookEvent) -> None:
    """Do nothing but note when the call started."""
    line = f"{event.event_id} {time.time():.6f}\n"
    if _fd >= 0:
        os.write(_fd, line.encode())  # one write: whole lines, even across restarts
    else:
        _started.append(line)


@app.on_shutdown
def _flush(context: PluginContext) -> None:
    if _RECORD and not _EACH:
        with open(_RECORD, "a") as record:
            record.writelines(_started)
        _started.clear()


def install(site: Path) -> dict[str, str]:
    """Make this module an installed frameiod plugin for a subprocess; return the
    environment entries it needs (PYTHONPATH, FRAMEIOD_PLUGINS)."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__), site / f"{MODULE}.py")
    dist = site / f"{MODULE}-0.0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[frameiod.plugins]\n{NAME} = {MODULE}:app\n")
    return {"PYTHONPATH": str(site), "FRAMEIOD_PLUGINS": NAME}
