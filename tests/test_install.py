"""As a user does it: pip-install frameiod and a plugin into a fresh virtualenv, run it,
install a second plugin with ``frameiod install``, restart, and see both at work."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import SECRET, DaemonProcess, run_cli, wait_until, write_config

from frameiod import __version__

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)


class Receiver:
    """A Slack-compatible incoming-webhook endpoint on loopback that records each post."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make dist` builds (wheels and sdists of frameiod and each plugin), in a folder
    of the test's own."""
    folder = tmp_path_factory.mktemp("dist")
    # Builds write into the checkout (each package's .egg-info): one at a time, whichever
    # workers run this module's tests.
    lock = Path(tempfile.gettempdir()) / "frameiod-make-dist.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        made = _run("make", "-C", str(REPO), "--no-print-directory", "dist", f"DIST={folder}")
    assert made.returncode == 0, made.stdout + made.stderr
    return folder


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Path:
    """A fresh virtualenv holding frameiod and frameiod-event-log, installed by pip from
    the wheels `make dist` built."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run(
        [
            str(folder / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *(str(wheel) for wheel in dist.glob("frameiod-*.whl")),
            *(str(wheel) for wheel in dist.glob("frameiod_event_log-*.whl")),
        ],
        check=True,
        timeout=600,
    )
    return folder


def _distributions() -> dict[str, str]:
    """Each package of the checkout, frameiod's and each plugin's: its normalised name
    (as wheel file names spell it) → its version."""
    found = {"frameiod": __version__}
    for pyproject in REPO.glob("plugins/*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        found[project["name"].replace("-", "_")] = project["version"]
    return found


def test_make_dist_builds_a_wheel_and_an_sdist_of_frameiod_and_of_each_plugin(dist: Path):
    expected = {
        file
        for name, version in _distributions().items()
        for file in (f"{name}-{version}-py3-none-any.whl", f"{name}-{version}.tar.gz")
    }
    assert {path.name for path in dist.iterdir()} == expected
    assert len(expected) >= 10  # frameiod and the four example plugins at least


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _plugins(venv: Path, config: Path) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [str(venv / "bin" / "frameiod"), "plugins", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {plugin["name"]: plugin for plugin in json.loads(result.stdout)}


def _send(venv: Path, config: Path, daemon: DaemonProcess, event_type: str) -> str:
    result = subprocess.run(
        [
            str(venv / "bin" / "frameiod"),
            "send",
            event_type,
            "--config",
            str(config),
            "--url",
            daemon.url(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status, body = result.stdout.split(" ", 1)
    assert status == "202"
    return json.loads(body)["id"]


def test_installed_plugins_handle_events_and_a_second_one_joins_after_restart(
    venv: Path, dist: Path, tmp_path: Path, receiver: Receiver
):
    config = write_config(
        tmp_path,
        f"""
[server]
port = 0
[sources.default]
secrets = ["{SECRET}"]
[plugins.event_log]
path = "events.jsonl"
[plugins.notify]
webhook_url = "{receiver.url}"
template = "{{event_type}} on {{resource_id}}"
""",
    )
    events = tmp_path / "events.jsonl"
    frameiod = [str(venv / "bin" / "frameiod")]

    # One plugin installed: the event reaches it.
    daemon = DaemonProcess(config, frameiod=frameiod, plugins=None)
    try:
        first = _send(venv, config, daemon, "file.ready")
        wait_until(lambda: any(line["event_id"] == first for line in _lines(events)))
    finally:
        assert daemon.stop() == 0
    listed = _plugins(venv, config)
    assert listed["event_log"]["status"] == "loaded"
    assert listed["event_log"]["distribution"] == "frameiod-event-log"
    assert listed["event_log"]["handlers"][0]["event_types"] == ["*"]
    assert "notify" not in listed

    # `frameiod install` puts the second plugin, from its wheel, into the daemon's own
    # environment.
    [wheel] = dist.glob("frameiod_notify-*.whl")
    install = subprocess.run(
        [*frameiod, "install", str(wheel), "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "notify  [loaded]  frameiod-notify 0.1.0" in install.stdout
    assert "Restart frameiod" in install.stdout

    # After a restart, both plugins get the events they want.
    daemon = DaemonProcess(config, frameiod=frameiod, plugins=None)
    try:
        second = _send(venv, config, daemon, "comment.created")
        wait_until(lambda: any(line["event_id"] == second for line in _lines(events)))
        wait_until(lambda: len(receiver.posts) == 1)
        finished = daemon.wait_for("handler finished", event_id=second, plugin="notify")
        assert finished["outcome"] == "ok"
    finally:
        assert daemon.stop() == 0
    resource_id = next(line for line in _lines(events) if line["event_id"] == second)["payload"][
        "resource"
    ]["id"]
    assert receiver.posts == [{"text": f"comment.created on {resource_id}"}]
    assert [line["type"] for line in _lines(events)] == ["file.ready", "comment.created"]

    listed = _plugins(venv, config)
    assert {name: plugin["status"] for name, plugin in listed.items()} == {
        "event_log": "loaded",
        "notify": "loaded",
    }
    assert listed["notify"]["version"] == "0.1.0"
    pins = subprocess.run(
        [*frameiod, "plugins", "--requirements", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert pins == ["frameiod-event-log==0.1.0", "frameiod-notify==0.1.0"]

    removed = subprocess.run(
        [*frameiod, "uninstall", "frameiod-notify", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert set(_plugins(venv, config)) == {"event_log"}


def test_a_broken_plugin_install_is_reported_and_the_daemon_still_runs(venv: Path, tmp_path: Path):
    """A plugin whose import fails is listed as failed; the others keep working."""
    package = tmp_path / "broken-plugin"
    (package / "frameiod_broken").mkdir(parents=True)
    (package / "frameiod_broken" / "__init__.py").write_text("import frameiod_missing_dep\n")
    (package / "pyproject.toml").write_text("""
[project]
name = "frameiod-broken"
version = "1.0"
[project.entry-points."frameiod.plugins"]
broken = "frameiod_broken"
""")
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(package)],
        check=True,
        timeout=600,
    )
    try:
        config = write_config(
            tmp_path,
            f"""
[server]
port = 0
[sources.default]
secrets = ["{SECRET}"]
[plugins]
disable = ["notify"]
[plugins.event_log]
path = "events.jsonl"
""",
        )
        daemon = DaemonProcess(config, frameiod=[str(venv / "bin" / "frameiod")], plugins=None)
        try:
            failed = daemon.wait_for("plugin failed", plugin="broken")
            assert "No module named 'frameiod_missing_dep'" in failed["reason"]
            event_id = _send(venv, config, daemon, "file.ready")
            log = tmp_path / "events.jsonl"
            wait_until(lambda: any(line["event_id"] == event_id for line in _lines(log)))
        finally:
            assert daemon.stop() == 0
        listed = _plugins(venv, config)
        assert listed["broken"]["status"] == "failed"
        assert listed["event_log"]["status"] == "loaded"
    finally:
        subprocess.run(
            [python, "-m", "pip", "uninstall", "-y", "--quiet", "frameiod-broken"], check=True
        )


@pytest.fixture
def fake_pip(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A stand-in for ``python -m pip`` that records its arguments, changes nothing and
    exits with $FAKE_PIP_STATUS (default 0): the environment that puts it first, and the
    file it writes. (A refusal that regressed must not uninstall the suite's own packages.)"""
    site = tmp_path / "fake-site"
    (site / "pip").mkdir(parents=True)
    record = tmp_path / "pip-argv.json"
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(
        f"import json, os, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "sys.exit(int(os.environ.get('FAKE_PIP_STATUS', '0')))\n"
    )
    return {"PYTHONPATH": str(site)}, record


class TestWhatIsPassedToPip:
    """`frameiod install` and `uninstall` run pip as whoever runs frameiod (often root): they
    pass on package names, paths, URLs and -e, -U, -r only, and never remove frameiod or
    what it needs. Each refusal is one line, exit status 2, and pip never runs."""

    @pytest.mark.parametrize(
        ("argv", "refused"),
        [
            (
                ["install", "--index-url", "http://127.0.0.1:9/simple", "frameiod-x"],
                "refused --index-url: it takes -e, -U and -r",
            ),
            (["install", "--target=/tmp/x", "frameiod-x"], "refused --target=/tmp/x: it takes"),
            (["install", "--", "--pre", "frameiod-x"], "refused '--pre': give package names"),
            (["install", "frameiod-x; os_name == 'posix'"], 'refused "frameiod-x; os_name'),
            (["install", "-e", "frameiod-x"], "refused -e 'frameiod-x': -e takes a path or a URL"),
            (
                ["install", "-r", "no-such-file"],
                "refused -r 'no-such-file': -r takes a requirements",
            ),
            (["install"], "name what to install"),
            (["uninstall", "-r", "plugins.txt"], "refused -r: it takes no options"),
            (["uninstall", "frameiod"], "refused frameiod: frameiod uninstall removes plugins"),
            (["uninstall", "pydantic==2.12"], "refused pydantic==2.12: frameiod needs it"),
            (
                ["uninstall", "Pydantic_Core"],
                "refused Pydantic_Core: frameiod needs it (frameiod -> pydantic -> pydantic-core)",
            ),
        ],
    )
    def test_a_refusal_is_one_line_and_runs_no_pip(
        self, argv: list[str], refused: str, fake_pip: tuple[dict[str, str], Path]
    ):
        env, record = fake_pip
        result = run_cli(*argv, env=env)
        assert result.returncode == 2
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(f"frameiod {argv[0]}: {refused}"), line
        assert not record.exists()

    def test_names_paths_urls_and_the_three_options_reach_pip(
        self, tmp_path: Path, fake_pip: tuple[dict[str, str], Path]
    ):
        env, record = fake_pip
        (tmp_path / "plugins.txt").write_text("frameiod-x\n")
        result = run_cli(
            "install",
            "-U",
            "-r",
            "plugins.txt",
            "-e",
            "./plugin-checkout",
            "frameiod-x[extra]>=1.0,<2",
            "./dist/frameiod_x-1.0-py3-none-any.whl",
            "https://127.0.0.1:9/frameiod_x-1.0.tar.gz",
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(record.read_text()) == [
            "install",
            "--upgrade",
            "--requirement=plugins.txt",
            "--editable=./plugin-checkout",
            "frameiod-x[extra]>=1.0,<2",
            "./dist/frameiod_x-1.0-py3-none-any.whl",
            "https://127.0.0.1:9/frameiod_x-1.0.tar.gz",
        ]

    def test_a_plugin_is_uninstalled_without_a_question(
        self, fake_pip: tuple[dict[str, str], Path]
    ):
        env, record = fake_pip
        result = run_cli("uninstall", "frameiod-event-log", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(record.read_text()) == ["uninstall", "-y", "frameiod-event-log"]


def _systemctl(folder: Path, status: int) -> dict[str, str]:
    """A folder holding a ``systemctl`` that answers ``is-active`` with ``status`` and
    records its arguments, as the only thing on PATH (no systemd runs in the tests)."""
    folder.mkdir()
    script = folder / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" > "{folder}/argv"\nexit {status}\n')
    script.chmod(0o755)
    return {"PATH": str(folder)}


class TestAfterPip:
    """What `frameiod install` and `uninstall` say once pip is done, and when pip is not
    run at all."""

    @pytest.mark.parametrize(
        ("systemctl", "hint"),
        [
            (0, "Restart frameiod to apply: systemctl restart frameiod"),
            (3, "Restart frameiod to apply."),
            (None, "Restart frameiod to apply."),
        ],
    )
    def test_the_restart_hint_names_systemctl_only_when_its_frameiod_unit_is_active(
        self,
        tmp_path: Path,
        fake_pip: tuple[dict[str, str], Path],
        systemctl: int | None,
        hint: str,
    ):
        env, record = fake_pip
        path = tmp_path / "bin"
        env |= _systemctl(path, systemctl) if systemctl is not None else {"PATH": str(tmp_path)}
        result = run_cli("install", "frameiod-x", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(record.read_text()) == ["install", "frameiod-x"]
        assert result.stdout.splitlines()[-1] == hint
        if systemctl is not None:
            assert (path / "argv").read_text().split() == ["is-active", "--quiet", "frameiod"]

    def test_uninstalling_what_is_not_installed_says_so_and_runs_no_pip(
        self, tmp_path: Path, fake_pip: tuple[dict[str, str], Path]
    ):
        env, record = fake_pip
        env |= _systemctl(tmp_path / "bin", 0)
        result = run_cli("uninstall", "frameiod-event-log", "frameiod-nowhere", env=env)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            "frameiod uninstall: frameiod-nowhere is not installed; nothing was changed\n"
        )
        assert not record.exists()

    def test_a_folder_named_without_a_slash_is_installed_editable(
        self, tmp_path: Path, fake_pip: tuple[dict[str, str], Path]
    ):
        """The folder `frameiod new-plugin my-plugin` leaves is what `-e my-plugin` means."""
        env, record = fake_pip
        (tmp_path / "my-plugin").mkdir()
        result = run_cli("install", "-e", "my-plugin[test]", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(record.read_text()) == ["install", "--editable=my-plugin[test]"]


def test_a_new_plugin_installed_editable_is_checked_runs_and_passes_its_own_tests(
    venv: Path, tmp_path: Path
):
    """The plugin author's path: `frameiod new-plugin`, `frameiod install -e`, `frameiod
    check`, a restart, an event; and the scaffold's own test suite passes."""
    frameiod = [str(venv / "bin" / "frameiod")]
    made = _run(*frameiod, "new-plugin", "greeter", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "frameiod-greeter"
    settings = f"""
[server]
port = 0
[sources.default]
secrets = ["{SECRET}"]
[plugins]
disable = ["event_log"]
"""
    config = write_config(tmp_path, settings + '[plugins.greeter]\ngreeting = "hi"\n')
    typo = write_config(tmp_path, settings + '[plugins.greeter]\ngreting = "hi"\n', name="t.toml")

    install = _run(*frameiod, "install", "-e", "frameiod-greeter[test]", cwd=tmp_path)
    try:
        assert install.returncode == 0, install.stdout + install.stderr
        assert "greeter  [loaded]  frameiod-greeter 0.1.0" in install.stdout

        checked = _run(*frameiod, "check", "--config", str(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        refused = _run(*frameiod, "check", "--config", str(typo))
        assert refused.returncode != 0
        assert "plugins.greeter.greting: unknown key" in refused.stdout + refused.stderr

        daemon = DaemonProcess(config, frameiod=frameiod, plugins=None)
        try:
            event_id = _send(venv, config, daemon, "file.ready")
            greeted = daemon.wait_for("greeted", plugin="greeter")
            assert greeted["greeting"] == "hi"
            finished = daemon.wait_for("handler finished", event_id=event_id, plugin="greeter")
            assert finished["outcome"] == "ok"
        finally:
            assert daemon.stop() == 0

        # The scaffold's own tests, as its author runs them in their checkout.
        python = str(venv / "bin" / "python")
        tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "3 passed" in tests.stdout
    finally:
        removed = _run(*frameiod, "uninstall", "frameiod-greeter")
        assert removed.returncode == 0, removed.stdout + removed.stderr


def test_make_run_brings_back_a_plugin_of_the_checkout_that_was_uninstalled(
    venv: Path, tmp_path: Path
):
    """`make run` reinstalls this checkout's packages when one is missing from its venv,
    though its install stamp is newer than every pyproject.toml. (The venv here stands in
    for the checkout's .venv; the run stops at once on a missing config.)"""
    frameiod = str(venv / "bin" / "frameiod")
    removed = _run(frameiod, "uninstall", "frameiod-event-log")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    (venv / ".run-installed").touch()
    made = _run(
        "make",
        "-C",
        str(REPO),
        "--no-print-directory",
        "run",
        f"VENV={venv}",
        "PLUGIN_DIRS=plugins/frameiod-event-log",
        f"CONFIG={tmp_path / 'missing.toml'}",
    )
    assert "make: reinstalling frameiod frameiod-event-log" in made.stdout, made.stderr
    assert "missing.toml" in made.stdout + made.stderr  # then `frameiod run` ran, and stopped
    assert _run(frameiod, "plugins", "--requirements").stdout.split() == [
        "frameiod-event-log==0.1.0"
    ]


@pytest.mark.parametrize(
    ("names", "hinted"),
    [(["frameiod-event-log"], True), (["Frameiod_Notify>=0.1"], True), (["requests"], False)],
)
def test_a_failed_install_of_a_frameiod_package_by_name_says_where_to_install_it_from(
    fake_pip: tuple[dict[str, str], Path], names: list[str], hinted: bool
):
    env, record = fake_pip
    result = run_cli("install", *names, env={**env, "FAKE_PIP_STATUS": "1"})
    assert result.returncode == 1
    assert json.loads(record.read_text()) == ["install", *names]
    lines = result.stderr.splitlines()
    assert lines[0] == "pip install failed; nothing else was changed"
    assert ("not on PyPI yet" in result.stderr) is hinted
    assert len(lines) == 1 + hinted
