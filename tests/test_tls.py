"""HTTPS served by frameiod itself, with certificates re-read on reload."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme

from frameiod.config import ConfigError
from frameiod.events import example_payload
from frameiod.signature import sign
from frameiod.testing import TEST_SECRET, run_daemon


def _issue(ca: trustme.CA, folder: Path) -> None:
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    certificate.private_key_pem.write_to_path(str(folder / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))


def _config(extra: str = "") -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
tls_certificate = "cert.pem"
tls_key = "key.pem"
{extra}
[sources.default]
secrets = ["{TEST_SECRET}"]
"""


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
    async with run_daemon(config_text=_config(), directory=tmp_path) as daemon:
        response = await _post(f"https://127.0.0.1:{daemon.port}/webhooks/default", ca)
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"


async def test_plain_http_is_not_answered_on_the_https_port(tmp_path: Path):
    _issue(trustme.CA(), tmp_path)
    async with run_daemon(config_text=_config(), directory=tmp_path) as daemon:
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://127.0.0.1:{daemon.port}/healthz")


async def test_tls_older_than_1_2_is_refused(tmp_path: Path):
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with run_daemon(config_text=_config(), directory=tmp_path) as daemon:
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
    async with run_daemon(config_text=_config(), directory=tmp_path) as daemon:
        url = f"https://127.0.0.1:{daemon.port}/webhooks/default"
        assert (await _post(url, old_ca)).status_code == 202
        _issue(new_ca, tmp_path)  # a renewal, as certbot would leave it
        assert await daemon.daemon.reload()
        assert (await _post(url, new_ca)).status_code == 202
        with pytest.raises(httpx.ConnectError):  # the old chain is no longer served
            await _post(url, old_ca)


async def test_unreadable_certificate_files_stop_start_up_with_the_key_named(tmp_path: Path):
    with pytest.raises(ConfigError) as error:
        async with run_daemon(config_text=_config(), directory=tmp_path):
            pass
    assert "server.tls_certificate / server.tls_key: cannot load" in error.value.problems[0]
    assert str(tmp_path / "cert.pem") in error.value.problems[0]


async def test_a_certificate_without_its_key_is_a_config_error(tmp_path: Path):
    text = _config().replace('tls_key = "key.pem"\n', "")
    with pytest.raises(ConfigError) as error:
        async with run_daemon(config_text=text, directory=tmp_path):
            pass
    assert error.value.problems[0].endswith(
        "server: tls_certificate and tls_key go together: set both or neither"
    )
