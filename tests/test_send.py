"""``frameiod send`` with a payload of the user's (``--body``) and to a daemon serving
HTTPS: real daemons as subprocesses, certificates made by trustme as in test_tls.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from redis_support import free_port
from support import FRAMEIOD, JSON_LOG, SECRET, DaemonProcess, run_cli, write_config

from frameiod.testing import config_toml

_TLS = 'tls_certificate = "cert.pem"\ntls_key = "key.pem"'


def _accepted_body(config: Path, stdout: str) -> bytes:
    """The body the daemon of ``config`` committed for the one event ``send`` printed."""
    status, answer = stdout.split(" ", 1)
    assert status == "202", stdout
    event_id = json.loads(answer)["id"]
    with closing(sqlite3.connect(config.parent / "frameiod.db")) as db:
        [(body,)] = db.execute("SELECT body FROM events WHERE id = ?", (event_id,)).fetchall()
    return bytes(body)


@dataclass(frozen=True)
class Https:
    """A daemon serving HTTPS with a certificate for 127.0.0.1 from ``ca``."""

    daemon: DaemonProcess
    config: Path
    ca: Path  # the CA's certificate, PEM

    def url(self, path: str = "/webhooks/default") -> str:
        return f"https://127.0.0.1:{self.daemon.port}{path}"


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    folder = tmp_path_factory.mktemp("https")
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    certificate.private_key_pem.write_to_path(str(folder / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    # A fixed port: the URL `send` makes up by default is the config's host and port.
    text = config_toml(secret=SECRET, port=free_port(), server=_TLS, log=JSON_LOG)
    config = write_config(folder, text)
    daemon = DaemonProcess(config)
    yield Https(daemon, config, folder / "ca.pem")
    daemon.kill()


class TestHttps:
    def test_the_default_url_is_https_and_trusts_the_configs_own_certificate(self, https: Https):
        https.daemon.port  # noqa: B018 - waits for the listening line
        result = run_cli("send", "file.ready", "--config", str(https.config))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith('202 {"status": "accepted"')

    def test_cacert_trusts_a_ca_for_a_daemon_of_another_config(self, https: Https, tmp_path: Path):
        # The sender's config has no certificate of its own: only --cacert can vouch.
        plain = write_config(tmp_path)
        trusted = run_cli(
            "send", "file.ready", "--config", str(plain), "--url", https.url(),
            "--cacert", str(https.ca),
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        assert trusted.stdout.startswith("202 ")
        untrusted = run_cli("send", "file.ready", "--config", str(plain), "--url", https.url())
        assert (untrusted.returncode, untrusted.stdout) == (1, "")
        assert untrusted.stderr.startswith(f"cannot reach {https.url()}: ")
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr

    def test_a_cacert_that_is_no_certificate_is_a_clear_error(self, https: Https, tmp_path: Path):
        bogus = tmp_path / "bogus.pem"
        bogus.write_text("not a certificate\n")
        result = run_cli(
            "send", "file.ready", "--config", str(https.config), "--cacert", str(bogus)
        )
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith(f"cannot verify HTTPS with {bogus}: ")

    def test_a_body_from_a_file_is_sent_over_https_as_it_is(self, https: Https, tmp_path: Path):
        body = b'{"type": "file.ready", "resource": {"id": "r-1", "type": "file"},\n "x": 1}'
        path = tmp_path / "payload.json"
        path.write_bytes(body)
        result = run_cli("send", "--body", str(path), "--config", str(https.config))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert _accepted_body(https.config, result.stdout.strip()) == body

    def test_a_body_goes_to_the_actions_route_with_action(self, https: Https, tmp_path: Path):
        path = tmp_path / "action.json"
        path.write_text(json.dumps({"type": "acme.none", "resource": {"id": "r"}}))
        result = run_cli(
            "send", "--action", "acme.none", "--body", str(path),
            "--config", str(https.config),
        )  # fmt: skip
        # The default URL is the actions route: it wants what an action request carries.
        assert result.returncode == 1
        assert result.stdout.startswith('422 {"error": "invalid_event", "detail": "action_id: ')


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(write_config(tmp_path_factory.mktemp("plain")))
    yield daemon
    daemon.kill()


class TestBody:
    def test_standard_input_is_the_body_with_a_dash(self, plain: DaemonProcess):
        body = json.dumps({"type": "comment.created", "resource": {"id": "c-7"}}).encode()
        result = subprocess.run(
            [*FRAMEIOD, "send", "comment.created", "--body", "-",
             "--config", str(plain.config_path),
             "--url", plain.url()],
            input=body, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert _accepted_body(plain.config_path, result.stdout.decode().strip()) == body

    def test_an_event_type_given_with_a_body_is_checked_against_its_type(
        self, plain: DaemonProcess, tmp_path: Path
    ):
        path = tmp_path / "payload.json"
        path.write_text(json.dumps({"type": "file.ready", "resource": {"id": "f-1"}}))
        argv = ["--body", str(path), "--config", str(plain.config_path), "--url", plain.url()]
        same = run_cli("send", "file.ready", *argv)
        assert (same.returncode, same.stderr) == (0, "")
        other = run_cli("send", "comment.created", *argv)
        # Sent as it is all the same: the daemon accepts it as the file.ready it is.
        assert other.returncode == 0, other.stderr
        assert other.stderr == (
            f"warning: the type in {path} is 'file.ready', not 'comment.created'; "
            "sending it as it is\n"
        )

    def test_a_body_that_is_not_json_is_sent_with_a_warning(
        self, plain: DaemonProcess, tmp_path: Path
    ):
        path = tmp_path / "payload.txt"
        path.write_bytes(b"type=file.ready")
        result = run_cli(
            "send", "--body", str(path), "--config", str(plain.config_path), "--url", plain.url()
        )
        # The daemon's answer is printed, and the command failed because the daemon refused.
        assert result.returncode == 1
        assert result.stdout.startswith("400 ")
        assert result.stderr.startswith(f"warning: {path} is not JSON (")
        assert result.stderr.rstrip().endswith("; sending it as it is")

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--body", "missing.json"], "cannot read --body missing.json: No such file"),
            (
                ["--action", "a.b", "--data", "{}", "--body", "-"],
                "--body is the whole payload: give no --data with it",
            ),
        ],
    )
    def test_usage_errors(self, plain: DaemonProcess, args: list[str], message: str):
        result = run_cli("send", *args, "--config", str(plain.config_path), "--url", plain.url())
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith(message)
