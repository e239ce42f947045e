"""HTTPS served by frameiod itself, with certificates re-read on reload."""

from __future__ import annotations

import json
import signal
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme
from support import JSON_LOG, DaemonProcess

from frameiod.config import ConfigError
from frameiod.events import example_payload
from frameiod.signature import sign
from frameiod.testing import TEST_SECRET, config_toml, run_daemon


def _issue(ca: trustme.CA, folder: Path, *, key: bool = True) -> bytes:
    """Write a certificate for 127.0.0.1 (and its key, unless ``key`` is False: a renewal
    caught half-written) and return the certificate's DER bytes."""
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    if key:
        certificate.private_key_pem.write_to_path(str(folder / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return ssl.PEM_cert_to_DER_cert(certificate.cert_chain_pems[0].bytes().decode())


def _served_certificate(port: int) -> bytes:
    """The DER bytes of the certificate a fresh handshake on ``port`` is given."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return ssl.PEM_cert_to_DER_cert(pem)


_TLS = 'tls_certificate = "cert.pem"\ntls_key = "key.pem"'


async def _post(url: str, ca: trustme.CA, **options: object) -> httpx.Response:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    body = json.dumps(example_payload("file.ready")).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Frameio-Request-Timestamp": ts,
        "X-Frameio-Signature": sign(TEST_SECRET, body, ts),
    }
    async with httpx.AsyncClient(verify=context, **options) as client:  # type: ignore[arg-type]
        return await client.post(url, content=body, headers=headers)


async def test_a_signed_event_over_https_is_accepted(tmp_path: Path):
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with run_daemon(config_text=config_toml(server=_TLS), directory=tmp_path) as daemon:
        response = await _post(f"https://127.0.0.1:{daemon.port}/webhooks/default", ca)
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"


async def test_plain_http_is_not_answered_on_the_https_port(tmp_path: Path):
    _issue(trustme.CA(), tmp_path)
    async with run_daemon(config_text=config_toml(server=_TLS), directory=tmp_path) as daemon:
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://127.0.0.1:{daemon.port}/healthz")


# The client must offer the old versions Python deprecates: that is what is refused.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_older_than_1_2_is_refused(tmp_path: Path):
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with run_daemon(config_text=config_toml(server=_TLS), directory=tmp_path) as daemon:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=context) as client:
                await client.get(f"https://127.0.0.1:{daemon.port}/healthz")


async def test_renewed_certificates_are_served_after_reload(tmp_path: Path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    _issue(old_ca, tmp_path)
    async with run_daemon(config_text=config_toml(server=_TLS), directory=tmp_path) as daemon:
        url = f"https://127.0.0.1:{daemon.port}/webhooks/default"
        assert (await _post(url, old_ca)).status_code == 202
        _issue(new_ca, tmp_path)  # a renewal, as certbot would leave it
        assert await daemon.daemon.reload()
        assert (await _post(url, new_ca)).status_code == 202
        with pytest.raises(httpx.ConnectError):  # the old chain is no longer served
            await _post(url, old_ca)


async def test_unreadable_certificate_files_stop_start_up_with_the_key_named(tmp_path: Path):
    with pytest.raises(ConfigError) as error:
        async with run_daemon(config_text=config_toml(server=_TLS), directory=tmp_path):
            pass
    assert "server.tls_certificate / server.tls_key: cannot load" in error.value.problems[0]
    assert str(tmp_path / "cert.pem") in error.value.problems[0]


async def test_a_certificate_without_its_key_is_a_config_error(tmp_path: Path):
    text = config_toml(server='tls_certificate = "cert.pem"')
    with pytest.raises(ConfigError) as error:
        async with run_daemon(config_text=text, directory=tmp_path):
            pass
    assert error.value.problems[0].endswith(
        "server: tls_certificate and tls_key go together: set both or neither"
    )


async def test_a_refused_certificate_reload_keeps_the_old_certificate_served(tmp_path: Path):
    """A renewal caught half-written (new certificate, old key) is refused and changes
    nothing: new handshakes still get the old certificate; the next good pair is served."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old = _issue(old_ca, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config_toml(server=_TLS, log=JSON_LOG))
    daemon = DaemonProcess(config)
    try:
        url = f"https://127.0.0.1:{daemon.port}/webhooks/default"
        assert _served_certificate(daemon.port) == old

        _issue(new_ca, tmp_path, key=False)
        daemon.process.send_signal(signal.SIGHUP)
        refused = daemon.wait_for("config reload refused; the old config stays in force")
        assert "server.tls_certificate / server.tls_key: cannot load" in str(refused["problem"])
        assert _served_certificate(daemon.port) == old
        assert (await _post(url, old_ca)).status_code == 202

        new = _issue(new_ca, tmp_path)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("config reloaded")
        assert _served_certificate(daemon.port) == new
        assert (await _post(url, new_ca)).status_code == 202
    finally:
        daemon.kill()
