"""The README's first steps, run as written: the quick start's commands, in a copy of this
checkout's ``config.toml``, print what the README shows; ``frameiod new-plugin`` prints
what it shows and writes the module it quotes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from redis_support import free_port
from support import DaemonProcess, run_cli, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What differs from one run to the next in a log line the README quotes.
VOLATILE = {"event_id", "duration_ms", "timestamp"}


def section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` in ``text``, in order, without their fences."""
    # A block inside a list item is indented as deep as its fence.
    found = re.findall(rf"^( *)```{language}\n(.*?)^ *```$", text, re.M | re.S)
    return [re.sub(rf"^{indent}", "", block, flags=re.M) for indent, block in found]


def commands(block: str) -> list[str]:
    """The commands of a ``sh`` block, comments dropped."""
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0]]


def masked(text: str) -> str:
    return UUID.sub("<id>", text).strip()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the checkout's ``config.toml``, on a free port (``make run`` runs
    ``frameiod run --config config.toml`` in the checkout; its spool and the event log are
    next to the file)."""
    for name in ("FRAMEIOD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    config = tmp_path / "config.toml"
    text, replaced = re.subn(
        r"^port = 8080\b", f"port = {free_port()}", config.read_text(), count=1, flags=re.M
    )
    assert replaced == 1, "the [server] port the quick start uses"
    config.write_text(text)
    return tmp_path


def test_the_quick_start_prints_what_the_readme_shows(checkout: Path):
    quick = section("Quick start")
    run, send, stats = (commands(block) for block in blocks(quick, "sh"))
    assert run == ["make run"]
    assert send == ["source .venv/bin/activate", "frameiod send file.ready"]
    answer, counts = blocks(quick, "text")
    daemon = DaemonProcess(checkout / "config.toml", plugins=None)  # what `make run` runs
    try:
        daemon.wait_for("listening")
        sent = run_cli(*send[1].split()[1:], cwd=checkout)
        assert sent.returncode == 0, sent.stderr
        assert masked(sent.stdout) == masked(answer)
        shown: list[str] = []

        def stats_as_shown() -> bool:
            shown.append(run_cli(*stats[0].split()[1:], cwd=checkout).stdout)
            return shown[-1].strip() == counts.strip()

        try:
            wait_until(stats_as_shown, timeout=15)
        except AssertionError:
            assert shown[-1].strip() == counts.strip()
        event_id = json.loads(sent.stdout.split(" ", 1)[1])["id"]
        logged = (checkout / "events.jsonl").read_text()
        assert json.loads(logged.splitlines()[-1])["event_id"] == event_id
        for quoted in blocks(quick, "json"):
            line: dict[str, Any] = json.loads(quoted)
            expected = {key: value for key, value in line.items() if key not in VOLATILE}
            real = daemon.wait_for(line["event"], event_id=event_id)
            assert {key: real.get(key) for key in expected} == expected
    finally:
        assert daemon.stop() == 0


def test_new_plugin_prints_what_the_readme_shows_and_writes_the_module_it_quotes(
    tmp_path: Path,
):
    five = section("A plugin in five minutes")
    new = commands(blocks(five, "sh")[0])
    assert new == ["frameiod new-plugin hello"]
    written = run_cli(*new[0].split()[1:], cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == blocks(five, "text")[0].strip()
    [module] = blocks(five, "python")
    assert (tmp_path / "frameiod-hello" / "frameiod_hello" / "__init__.py").read_text() == module
