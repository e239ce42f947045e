"""Slow and hostile clients: trickled headers and bodies, too many connections,
compressed bodies, idle keep-alive."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from frameiod.events import example_payload
from frameiod.signature import sign
from frameiod.testing import TEST_SECRET, RunningDaemon, config_toml, run_daemon


def _request(body: bytes, extra: str = "") -> bytes:
    ts = str(int(time.time()))
    return (
        "POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"X-Frameio-Request-Timestamp: {ts}\r\n"
        f"X-Frameio-Signature: {sign(TEST_SECRET, body, ts)}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _read_all(reader: asyncio.StreamReader, within: float) -> bytes:
    async with asyncio.timeout(within):
        return await reader.read()  # until the server closes the connection


async def _until(daemon: RunningDaemon, condition: Callable[[Any], bool]) -> None:
    """Wait until ``condition`` holds for every connection the daemon holds."""
    server = _server(daemon)
    async with asyncio.timeout(5):
        while not all(condition(h) for h in server.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def _server(daemon: RunningDaemon) -> web.Server:
    assert daemon.daemon.listener is not None
    server = daemon.daemon.listener.runner.server
    assert server is not None
    return server


async def _until_served(daemon: RunningDaemon, count: int) -> None:
    """Wait until the daemon holds ``count`` connections."""
    server = _server(daemon)
    async with asyncio.timeout(5):
        while len(server.connections) != count:  # noqa: ASYNC110 - aiohttp has no event
            await asyncio.sleep(0.01)


class TestTrickle:
    async def test_two_hundred_tricklers_are_cut_off_while_real_events_keep_flowing(self):
        # All from one address: lift its cap (tests/test_connection_guards.py tests that).
        config = config_toml(server='read_timeout = "2s"\nmax_connections_per_address = 1000')
        async with run_daemon(config_text=config) as daemon:
            port = daemon.port

            async def trickle() -> tuple[bytes, float]:
                """Send a request one byte a second; return what came back and when."""
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.monotonic()
                answer = asyncio.create_task(reader.read())  # everything until the close
                try:
                    for byte in _request(b"{}"):
                        writer.write(bytes([byte]))
                        done, _ = await asyncio.wait({answer}, timeout=1.0)
                        if done:
                            break
                except ConnectionError:
                    pass  # closed under us
                try:
                    data = await asyncio.wait_for(answer, timeout=5)
                except ConnectionResetError:
                    # Closed while our next byte was in flight: the kernel answers that
                    # byte with a reset, which can overtake the 408. Closed all the same.
                    data = b"reset"
                writer.close()
                return data, time.monotonic() - started

            tricklers = [asyncio.create_task(trickle()) for _ in range(200)]
            statuses = []
            for _ in range(20):  # a steady stream of real events meanwhile
                statuses.append((await daemon.send("file.ready", wait=False)).status)
                await asyncio.sleep(0.1)
            results = await asyncio.gather(*tricklers)
        assert statuses == [202] * 20
        assert {answer[:12] for answer, _ in results} <= {b"HTTP/1.1 408", b"reset"}
        # How many see the 408 before a reset depends on the machine's timing; every one is
        # closed in time. (The exact 408 is pinned by the single-connection tests below.)
        assert any(answer.startswith(b"HTTP/1.1 408") for answer, _ in results)
        assert max(seconds for _, seconds in results) < 2 + 1.5

    async def test_headers_that_stop_arriving_get_408_and_the_connection_closes(self):
        async with run_daemon(config_text=config_toml(server='read_timeout = "1s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(b"POST /webhooks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            answer = await _read_all(reader, within=5)
            waited = time.monotonic() - started
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert answer.endswith(b'{"error": "read_timeout"}\n')
        assert waited < 2.5

    async def test_a_trickled_body_gets_408_within_the_deadline(self):
        async with run_daemon(config_text=config_toml(server='read_timeout = "1s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            body = json.dumps(example_payload("file.ready")).encode()
            request = _request(body)
            writer.write(request[: len(request) - len(body) + 5])  # headers and a little body
            started = time.monotonic()
            answer = await _read_all(reader, within=5)
            waited = time.monotonic() - started
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"error": "read_timeout"' in answer
        assert waited < 2.5


class TestConnections:
    @pytest.mark.parametrize("sent", ["nothing", "a part of a head"])
    async def test_at_the_cap_the_longest_waiting_connection_makes_room_for_a_new_one(
        self, sent: str
    ):
        """Connections without a complete request head must not shut Frame.io out once they
        fill the cap, whether they sent nothing or a byte or a line of a head."""
        requests = [_request(json.dumps(example_payload("file.ready")).encode()) for _ in range(4)]
        begun = 0 if sent == "nothing" else requests[0].index(b"\r\n") + 2
        async with run_daemon(config_text=config_toml(server="max_connections = 3")) as daemon:
            waiting = []
            for request in requests[:3]:
                waiting.append(await asyncio.open_connection("127.0.0.1", daemon.port))
                waiting[-1][1].write(request[:begun])
                await _until_served(daemon, len(waiting))
            await _until(daemon, lambda h: begun == 0 or h.first_byte_at is not None)
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(requests[3])
            assert (await reader.readline()).startswith(b"HTTP/1.1 202")
            # The first to open, waiting longest, was closed; the others still serve.
            assert await _read_all(waiting[0][0], within=2) == b""
            for (waiting_reader, waiting_writer), request in zip(
                waiting[1:], requests[1:3], strict=True
            ):
                waiting_writer.write(request[begun:])
                assert (await waiting_reader.readline()).startswith(b"HTTP/1.1 202")
            for _, each in [*waiting, (reader, writer)]:
                each.close()
            await _until_served(daemon, 0)
            metrics = await daemon.metrics()
        refused = "frameiod_connections_refused_total"
        assert metrics[(refused, (("reason", "idle_evicted"),))] == 1
        assert metrics[(refused, (("reason", "max_connections"),))] == 0

    async def test_at_the_cap_with_every_connection_serving_a_request_a_new_one_is_closed(self):
        async with run_daemon(config_text=config_toml(server="max_connections = 2")) as daemon:
            busy = []
            for _ in range(2):
                busy.append(await asyncio.open_connection("127.0.0.1", daemon.port))
                # A whole head, its body still to come: the route is reading it.
                head = _request(b'{"type": "file.ready"}')[: -len(b'{"type": "file.ready"}')]
                busy[-1][1].write(head)
                await _until_served(daemon, len(busy))
            await _until(daemon, lambda h: h.busy)
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            assert await _read_all(reader, within=2) == b""
            writer.close()
            for _, each in busy:
                each.close()
            await _until_served(daemon, 0)
            metrics = await daemon.metrics()
            # With the others gone, a new connection is served again.
            assert (await daemon.send("file.ready", wait=False)).status == 202
        refused = "frameiod_connections_refused_total"
        assert metrics[(refused, (("reason", "max_connections"),))] == 1
        assert metrics[(refused, (("reason", "idle_evicted"),))] == 0

    async def test_idle_keep_alive_connections_are_closed_after_the_timeout(self):
        async with run_daemon(config_text=config_toml(server='keepalive_timeout = "1s"')) as daemon:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            body = json.dumps(example_payload("file.ready")).encode()
            writer.write(_request(body))
            await writer.drain()
            status = await reader.readline()
            started = time.monotonic()
            rest = await _read_all(reader, within=5)
            writer.close()
        assert status.startswith(b"HTTP/1.1 202")
        assert b"accepted" in rest
        assert time.monotonic() - started < 3


class TestCompression:
    async def test_a_compressed_body_is_refused_with_415(
        self,
    ):
        async with run_daemon() as daemon:
            daemon_: RunningDaemon = daemon
            body = gzip.compress(json.dumps(example_payload("file.ready")).encode())
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon_.port)
            writer.write(_request(body, extra="Content-Encoding: gzip\r\n"))
            answer = await _read_all(reader, within=5)
            writer.close()
        assert answer.startswith(b"HTTP/1.1 415")
        assert b"compressed_body" in answer
