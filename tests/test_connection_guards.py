"""Hostile connections: one address holding every slot, connections that never send a
request head (fresh, kept alive, or mid-TLS-handshake), and HTTP too malformed for the
parser, which is answered, counted, logged and charged like any other refusal."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import trustme
from support import (
    JSON_LOG,
    SECRET,
    DaemonProcess,
    config_toml,
    event_body,
    signed_headers,
    write_config,
)

from frameiod.testing import run_daemon

# Loopback is a whole /8 on Linux: binding a client to another of its addresses makes it
# "another address" for the daemon, for real.
ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"


# Every daemon here: one source signed with SECRET, JSON logs; each test sets [server].
_config = functools.partial(config_toml, secret=SECRET, log=JSON_LOG)


def _webhook(extra_headers: str = "", body: bytes | None = None) -> bytes:
    body = event_body() if body is None else body
    headers = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(body).items())
    return (
        "POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{headers}Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


def _connect(port: int, source: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )
    sock.settimeout(timeout)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return status, headers, body


def _client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5)


class TestConnectionsPerAddress:
    def test_one_address_at_its_cap_is_refused_more_while_others_are_answered(self, tmp_path: Path):
        """Through the real daemon: the fifth connection from one address is closed at
        once, counted and logged; its four are still served; another address's webhook
        and /healthz are answered."""
        daemon = DaemonProcess(
            write_config(
                tmp_path, _config(server='max_connections_per_address = 4\nread_timeout = "5s"')
            )
        )
        try:
            port = daemon.port
            held = [_connect(port, ATTACKER) for _ in range(4)]
            extra = _connect(port, ATTACKER)
            started = time.monotonic()
            assert _read_to_close(extra) == b""
            # Closed at once, well inside read_timeout: refused, not timed out.
            assert time.monotonic() - started < 2.5
            with _client(BYSTANDER) as client:
                body = event_body()
                accepted = client.post(
                    f"http://127.0.0.1:{port}/webhooks/default",
                    content=body,
                    headers=signed_headers(body),
                )
                health = client.get(f"http://127.0.0.1:{port}/healthz")
            assert accepted.status_code == 202
            assert accepted.json()["status"] == "accepted"
            assert health.status_code == 200
            # The address's own connections within the cap are served as usual.
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_to_close(held[0]).startswith(b"HTTP/1.1 200")
            refused = daemon.wait_for("connection refused", reason="per_address")
            assert refused["remote"] == ATTACKER
            assert refused["limit"] == 4
            assert refused["level"] == "warning"
            metrics = daemon.metrics()
            refusals = "frameiod_connections_refused_total"
            assert metrics[(refusals, (("reason", "per_address"),))] == 1
            assert metrics[(refusals, (("reason", "max_connections"),))] == 0
            for sock in held:
                sock.close()
        finally:
            assert daemon.stop() == 0

    async def test_an_address_gets_its_slots_back_as_its_connections_close(self):
        async with run_daemon(
            config_text=_config(server="max_connections_per_address = 2")
        ) as daemon:
            answers = []
            for _ in range(3):  # each round uses both slots, then gives them back
                opened = [
                    await asyncio.open_connection(
                        "127.0.0.1", daemon.port, local_addr=(ATTACKER, 0)
                    )
                    for _ in range(2)
                ]
                for reader, writer in opened:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    async with asyncio.timeout(5):
                        answers.append(await reader.read())
                    writer.close()
        assert len(answers) == 6
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)

    async def test_a_trusted_proxy_is_not_held_to_the_per_address_cap(self):
        """Every request behind a reverse proxy arrives from the proxy's address."""
        config = _config(server='max_connections_per_address = 2\ntrusted_proxies = ["127.0.0.1"]')
        async with run_daemon(config_text=config) as daemon:
            held = [await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(4)]
            reader, writer = held[-1]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
            for _, each in held:
                each.close()
        assert answer.startswith(b"HTTP/1.1 200")


class TestRequestHeadDeadline:
    async def _closed_after(
        self, reader: asyncio.StreamReader, within: float = 5.0
    ) -> tuple[bytes, float]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                data = await reader.read()
        except ConnectionResetError:
            data = b""
        return data, time.monotonic() - started

    async def test_a_connection_that_sends_nothing_is_closed_after_read_timeout(self):
        config = _config(server='read_timeout = "0.5s"')  # keepalive_timeout stays 75 s
        async with run_daemon(config_text=config) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            data, waited = await self._closed_after(reader)
            writer.close()
            metrics = await daemon.metrics()
        assert data == b""  # nothing was asked, so nothing is answered
        assert 0.4 < waited < 1.5
        assert metrics[("frameiod_connections_refused_total", (("reason", "idle_timeout"),))] == 1

    async def test_a_kept_alive_connection_is_closed_read_timeout_after_its_answer(self):
        async with run_daemon(config_text=_config(server='read_timeout = "0.5s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(_webhook())
            status = await reader.readuntil(b"\r\n\r\n")
            data, waited = await self._closed_after(reader)
            writer.close()
        assert status.startswith(b"HTTP/1.1 202")
        assert b'"accepted"' in data
        assert waited < 1.5

    async def test_the_next_request_begun_behind_an_answered_one_is_cut_at_the_deadline(self):
        """The first bytes of the next request ride in behind a complete one, then stop."""
        async with run_daemon(config_text=_config(server='read_timeout = "0.5s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(_webhook() + b"POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            status = await reader.readuntil(b"\r\n\r\n")
            _, waited = await self._closed_after(reader)
            writer.close()
        assert status.startswith(b"HTTP/1.1 202")
        assert waited < 1.5

    async def test_a_head_begun_after_an_answer_is_due_read_timeout_after_that_answer(self):
        async with run_daemon(config_text=_config(server='read_timeout = "0.5s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(_webhook(extra_headers=""))
            await reader.readuntil(b"\r\n\r\n")
            answered = time.monotonic()
            writer.write(b"POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            data, _ = await self._closed_after(reader)
            writer.close()
            metrics = await daemon.metrics()
        assert b"HTTP/1.1 408 Request Timeout" in data
        assert data.endswith(b'{"error": "read_timeout"}\n')
        assert time.monotonic() - answered < 1.5
        assert metrics[("frameiod_connections_refused_total", (("reason", "header_timeout"),))] == 1


class TestTlsHandshakeDeadline:
    @staticmethod
    def _issue(folder: Path) -> None:
        certificate = trustme.CA().issue_cert("127.0.0.1")
        certificate.private_key_pem.write_to_path(str(folder / "key.pem"))
        certificate.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))

    @staticmethod
    def _half_a_client_hello() -> bytes:
        client = ssl.create_default_context().wrap_bio(
            ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1"
        )
        # The ClientHello is written; the server's answer would come next.
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        hello = outgoing.read()
        return hello[: len(hello) // 2]

    def test_a_stalled_handshake_is_closed_after_read_timeout(self, tmp_path: Path):
        """Through the real daemon: no ClientHello at all, and half of one, are both cut
        at read_timeout, and a real HTTPS client is served meanwhile."""
        self._issue(tmp_path)
        tls = 'tls_certificate = "cert.pem"\ntls_key = "key.pem"'
        daemon = DaemonProcess(
            write_config(tmp_path, _config(server='read_timeout = "0.5s"\n' + tls))
        )
        try:
            port = daemon.port
            silent = _connect(port, ATTACKER)
            halfway = _connect(port, ATTACKER)
            halfway.sendall(self._half_a_client_hello())
            started = time.monotonic()
            assert _read_to_close(silent) == b""
            assert _read_to_close(halfway) == b""
            assert time.monotonic() - started < 2.0
        finally:
            assert daemon.stop() == 0


class TestMalformedHttp:
    TWO_LENGTHS = "Content-Length: 2\r\n"

    def _malformed(self, port: int, source: str = ATTACKER) -> tuple[str, dict[str, str], bytes]:
        sock = _connect(port, source)
        sock.sendall(_webhook(extra_headers=self.TWO_LENGTHS))
        answer = _read_to_close(sock)
        sock.close()
        return _split(answer)

    def test_two_content_lengths_are_answered_in_json_counted_logged_and_charged(
        self, tmp_path: Path
    ):
        """Through the real daemon: a parser-level 400 is JSON, counted as malformed, one
        warning line without a traceback, and spends the address's budget like a 401."""
        daemon = DaemonProcess(
            write_config(tmp_path, _config(server="unauthenticated_failures = 3"))
        )
        try:
            port = daemon.port
            answers = [self._malformed(port) for _ in range(3)]
            for status, headers, body in answers:
                assert " 400 " in status
                assert headers["content-type"].startswith("application/json")
                answer = json.loads(body)
                assert answer["error"] == "malformed_http"
                assert "Content-Length" in answer["detail"]
            # The budget is spent: the next is refused before it is even parsed further.
            status, headers, body = self._malformed(port)
            assert " 429 " in status
            assert int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"] == "address_rate_limited"
            # The same address's well-formed webhook is refused too; another's is accepted.
            body_ = event_body()
            url = f"http://127.0.0.1:{port}/webhooks/default"
            with _client(ATTACKER) as client:
                limited = client.post(url, content=body_, headers=signed_headers(body_))
            with _client(BYSTANDER) as client:
                accepted = client.post(url, content=body_, headers=signed_headers(body_))
            assert limited.status_code == 429
            assert accepted.status_code == 202

            metrics = daemon.metrics()
            received = "frameiod_deliveries_received_total"
            assert metrics[(received, (("outcome", "malformed"), ("source", "unknown")))] == 3
            assert metrics[(received, (("outcome", "rate_limited"), ("source", "unknown")))] == 1
            unauthenticated = "frameiod_unauthenticated_rejected_total"
            assert metrics[(unauthenticated, (("reason", "malformed"),))] == 3
            assert metrics[(unauthenticated, (("reason", "address_limited"),))] == 2

            rejected = [
                line
                for line in daemon.logs("request rejected")
                if line.get("reason") == "malformed_http"
            ]
            assert len(rejected) == 3
            for line in rejected:
                assert line["level"] == "warning"
                assert line["status"] == 400
                assert line["outcome"] == "malformed"
                assert line["remote"] == ATTACKER
                assert "exception" not in line
        finally:
            assert daemon.stop() == 0
        assert not [line for line in daemon.raw if "Traceback" in line or "Error handling" in line]

    async def test_malformed_http_from_a_trusted_proxy_is_charged_to_nobody(self):
        """Its headers were never read, so whom the proxy forwarded for is unknown: the
        proxy's address is not charged, or every client behind it would get 429."""
        config = _config(server='unauthenticated_failures = 1\ntrusted_proxies = ["127.0.0.1"]')
        async with run_daemon(config_text=config) as daemon:
            statuses = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
                writer.write(_webhook(extra_headers=self.TWO_LENGTHS))
                async with asyncio.timeout(5):
                    statuses.append(_split(await reader.read())[0])
                writer.close()
            accepted = await daemon.send(wait=False)
        assert all(" 400 " in status for status in statuses), statuses
        assert accepted.status == 202

    @staticmethod
    def _chunked_head() -> bytes:
        headers = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(b"{}").items())
        return (
            "POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"{headers}Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        ).encode()

    async def test_a_broken_chunk_sent_with_its_head_is_a_json_400(self):
        async with run_daemon(config_text=_config()) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(self._chunked_head() + b"zz\r\n{}\r\n0\r\n\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
            writer.close()
            metrics = await daemon.metrics()
        status, _, content = _split(answer)
        assert " 400 " in status
        assert json.loads(content)["error"] == "malformed_http"
        received = "frameiod_deliveries_received_total"
        assert metrics[(received, (("outcome", "malformed"), ("source", "unknown")))] == 1

    def test_a_broken_chunk_the_route_is_reading_is_its_400(self, tmp_path: Path):
        """Through the real daemon on aiohttp's pure-Python parser, which reports a broken
        chunk to the route reading the body: a JSON 400 counted under the route's source.
        (The C parser holds such a body until ``read_timeout``: a 408.)"""
        daemon = DaemonProcess(
            write_config(tmp_path, _config()), env={"AIOHTTP_NO_EXTENSIONS": "1"}
        )
        try:
            sock = _connect(daemon.port, ATTACKER)
            sock.sendall(self._chunked_head())
            # The 100 says the route is waiting for the body.
            assert sock.recv(4096).startswith(b"HTTP/1.1 100")
            sock.sendall(b"2\r\n{}XX0\r\n\r\n")
            status, _, content = _split(_read_to_close(sock))
            sock.close()
            assert " 400 " in status, "".join(daemon.raw)
            assert json.loads(content)["error"] == "malformed_http"
            received = "frameiod_deliveries_received_total"
            metrics = daemon.metrics()
            assert metrics[(received, (("outcome", "malformed"), ("source", "default")))] == 1
        finally:
            assert daemon.stop() == 0
        assert not [line for line in daemon.raw if "Traceback" in line]
