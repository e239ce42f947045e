"""Hostile HTTP through a real `frameiod run`: request smuggling, header tricks, JSON bombs.

Each request goes over its own raw socket, byte for byte as an attacker would send it.
Every one must get a JSON 400 naming the cause, close the connection (so nothing smuggled
behind it is ever read as a request), log one warning line and no traceback.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import DaemonProcess, signed_headers, write_config

SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
HOSTILE = {
    # Both framings at once: the classic CL.TE / TE.CL desync, a request hidden behind.
    "content_length_and_chunked": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "unknown_transfer_coding": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "transfer_coding_list": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "transfer_encoding_twice": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "space_before_colon": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length : 4\r\n\r\nabcd" + SMUGGLED,
    "obsolete_line_folding": b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n"
    b"  folded\r\nContent-Length: 0\r\n\r\n" + SMUGGLED,
    "bare_line_feeds": b"POST /webhooks/default HTTP/1.1\nHost: x\nContent-Length: 0\n\n"
    + SMUGGLED,
    "nul_in_a_header": b"POST /webhooks/default HTTP/1.1\r\nHost: x\x00y\r\n"
    b"Content-Length: 0\r\n\r\n" + SMUGGLED,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("hostile")
    config = write_config(folder)
    text = config.read_text().replace("max_body_bytes = 4096", "max_body_bytes = 65536")
    config.write_text(text + f'\n[spool]\npath = "{folder / "spool.db"}"\n')
    process = DaemonProcess(config)
    process.wait_for("listening")
    yield process
    assert process.stop() == 0


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_bytes", HOSTILE.values(), ids=HOSTILE.keys())
def test_malformed_framing_is_a_json_400_and_nothing_behind_it_is_served(
    daemon: DaemonProcess, request_bytes: bytes
):
    before = len(daemon.logs("request rejected"))
    answer = _exchange(daemon.port, request_bytes)
    status, headers, body = _split(answer)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == "malformed_http"
    # One answer, then the connection closed: the request smuggled behind was never read.
    assert len(body) == int(headers["content-length"])
    daemon.wait_for_log(lambda _: len(daemon.logs("request rejected")) > before)
    assert not any("Traceback" in line for line in daemon.raw)


def test_json_nested_twenty_thousand_deep_is_refused_as_not_json(daemon: DaemonProcess):
    """A signed JSON bomb (within the size limit) is parsed with a bounded depth: 400."""
    body = b'{"type": "file.ready", "resource": {"id": "r", "type": "file"}, "x": '
    body += b"[" * 20_000 + b"]" * 20_000 + b"}"
    head = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(body).items())
    request = (
        f"POST /webhooks/default HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    status, _, answer = _split(_exchange(daemon.port, request))
    assert status == 400
    error = json.loads(answer)
    assert error["error"] == "not_json"
    assert "recursion limit" in error["detail"]
    daemon.wait_for("webhook rejected", reason="not_json")
    assert not any("Traceback" in line for line in daemon.raw)


def test_the_daemon_still_serves_after_all_of_it(daemon: DaemonProcess, tmp_path: Path):
    status, _, body = _split(
        _exchange(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert (status, json.loads(body)) == (200, {"status": "ok"})
