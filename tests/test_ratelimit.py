"""Rate limits: the buckets with a fake clock, and the limits as a sender meets them."""

from __future__ import annotations

import asyncio
import json
import time

from multidict import CIMultiDict
from structlog.testing import capture_logs

from frameiod.ratelimit import (
    AddressLimiter,
    SourceLimiter,
    TokenBucket,
    client_address,
    networks,
    retry_after_header,
)
from frameiod.testing import TEST_SECRET, RunningDaemon, config_toml, run_daemon


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucket:
    def test_a_full_bucket_allows_a_burst_then_waits_for_the_refill(self):
        clock = FakeClock()
        bucket = TokenBucket.full(rate=2.0, capacity=3, now=clock())
        assert [bucket.take(clock()) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert bucket.take(clock()) == 0.5  # one token every half second
        clock.now += 0.25
        assert bucket.take(clock()) == 0.25
        clock.now += 0.25
        assert bucket.take(clock()) == 0.0

    def test_refill_never_exceeds_the_capacity(self):
        clock = FakeClock()
        bucket = TokenBucket.full(rate=100.0, capacity=2, now=clock())
        clock.now += 3600
        assert [bucket.take(clock()) == 0.0 for _ in range(3)] == [True, True, False]

    def test_retry_after_is_whole_seconds_and_at_least_one(self):
        assert [retry_after_header(s) for s in (0.001, 0.5, 1.0, 1.01, 59.2)] == [
            "1",
            "1",
            "1",
            "2",
            "60",
        ]


class TestSourceLimiter:
    async def test_each_source_has_its_own_bucket(self):
        clock = FakeClock()
        limiter = SourceLimiter({"a": (1.0, 2), "b": (1.0, 1)}, clock)
        assert [await limiter.take("a") for _ in range(3)] == [0.0, 0.0, 1.0]
        assert await limiter.take("b") == 0.0
        assert await limiter.take("b") == 1.0
        assert await limiter.take("unconfigured") == 0.0


class TestAddressLimiter:
    def test_an_address_is_blocked_once_it_used_its_refusals_and_freed_after_refill(self):
        clock = FakeClock()
        limiter = AddressLimiter(per_minute=3, max_tracked=10, clock=clock)
        for _ in range(3):
            assert limiter.blocked("10.0.0.1") == 0.0
            limiter.refused("10.0.0.1")
        assert limiter.blocked("10.0.0.1") == 20.0  # 3 per minute: one every 20 s
        assert limiter.blocked("10.0.0.2") == 0.0
        clock.now += 20
        assert limiter.blocked("10.0.0.1") == 0.0

    def test_memory_is_bounded_least_recently_seen_first(self):
        limiter = AddressLimiter(per_minute=1, max_tracked=3, clock=FakeClock())
        for address in ("a", "b", "c"):
            limiter.refused(address)
        limiter.refused("a")  # seen again: most recent now
        limiter.refused("d")
        assert len(limiter) == 3
        assert limiter.blocked("b") == 0.0  # evicted, forgotten
        assert limiter.blocked("a") > 0
        assert limiter.blocked("d") > 0


class TestClientAddress:
    def test_the_peer_is_used_unless_it_is_a_trusted_proxy(self):
        assert client_address("203.0.113.9", ["198.51.100.1"], networks([])) == "203.0.113.9"
        assert (
            client_address("203.0.113.9", ["198.51.100.1"], networks(["10.0.0.0/8"]))
            == "203.0.113.9"
        )
        assert (
            client_address("10.0.0.5", ["198.51.100.1"], networks(["10.0.0.0/8"])) == "198.51.100.1"
        )

    def test_the_nearest_untrusted_hop_is_the_client(self):
        hops = ["198.51.100.7, 203.0.113.1, 10.0.0.9"]
        assert client_address("10.0.0.5", hops, networks(["10.0.0.0/8"])) == "203.0.113.1"
        assert client_address("10.0.0.5", ["10.0.0.8"], networks(["10.0.0.0/8"])) == "10.0.0.5"

    async def test_a_line_a_proxy_added_counts_not_the_client_s_own_first_line(self):
        """A proxy that adds its own X-Forwarded-For line (HAProxy's ``option forwardfor``)
        leaves the client's line first: read alone, it would let a forger charge its
        refusals to Frame.io's address."""
        frameio, forger = "198.51.100.7", "203.0.113.9"
        config = config_toml(server='trusted_proxies = ["127.0.0.1"]')
        with capture_logs() as logs:
            async with run_daemon(config_text=config) as daemon:
                headers = CIMultiDict(
                    [
                        ("X-Frameio-Request-Timestamp", str(int(time.time()))),
                        ("X-Frameio-Signature", "v0=" + "0" * 64),
                        ("Content-Type", "application/json"),
                        ("X-Forwarded-For", frameio),
                        ("X-Forwarded-For", forger),
                    ]
                )
                async with daemon._session.post(
                    daemon.url("/webhooks/default"), data=b"{}", headers=headers
                ) as response:
                    assert response.status == 401
        [refused] = [line for line in logs if line["event"] == "webhook rejected"]
        assert refused["remote"] == forger


class TestAsASenderMeetsThem:
    async def test_a_source_over_its_rate_gets_429_with_retry_after(self):
        async with run_daemon(config_text=config_toml(source="rate = 0.5\nburst = 2")) as daemon:
            answers = [await daemon.send("file.ready") for _ in range(3)]
            async with daemon._session.post(
                daemon.url("/webhooks/default"),
                data=json.dumps({"type": "file.ready", "resource": {"id": "x"}}),
                headers=_signed(b'{"type": "file.ready", "resource": {"id": "x"}}'),
            ) as response:
                retry = response.headers.get("Retry-After")
                status = response.status
            metrics = await daemon.metrics()
        assert [a.status for a in answers] == [202, 202, 429]
        assert answers[2].body == {
            "error": "source_rate_limited",
            "detail": "source 'default' is over its rate",
        }
        assert status == 429
        assert retry in ("1", "2")  # one token every 2 s, part of which has passed
        assert metrics[("frameiod_rate_limited_total", (("source", "default"),))] == 2

    async def test_forged_requests_do_not_spend_the_sources_budget(self):
        config = config_toml(
            server="unauthenticated_failures = 1000", source="rate = 0.01\nburst = 1"
        )
        async with run_daemon(config_text=config) as daemon:
            for _ in range(5):
                assert (await daemon.send("file.ready", secret="forged")).status == 401
            assert (await daemon.send("file.ready")).status == 202

    async def test_an_address_over_its_failure_budget_is_refused_before_verification(self):
        config = config_toml(server="unauthenticated_failures = 3")
        async with run_daemon(config_text=config) as daemon:
            refused = [(await daemon.send("file.ready", secret="forged")).status for _ in range(3)]
            blocked = await daemon.send("file.ready")  # valid, but the address is blocked
            metrics = await daemon.metrics()
        assert refused == [401, 401, 401]
        assert blocked.status == 429
        assert blocked.body["error"] == "address_rate_limited"
        key = "frameiod_unauthenticated_rejected_total"
        assert metrics[(key, (("reason", "bad_signature"),))] == 3
        assert metrics[(key, (("reason", "address_limited"),))] == 1

    async def test_behind_a_trusted_proxy_each_client_has_its_own_budget(self):
        config = config_toml(server='unauthenticated_failures = 2\ntrusted_proxies = ["127.0.0.1"]')
        async with run_daemon(config_text=config) as daemon:
            for _ in range(2):
                await _post(daemon, "198.51.100.1", secret="forged")
            assert await _post(daemon, "198.51.100.1") == 429
            assert await _post(daemon, "198.51.100.2") == 202  # another client, unaffected

    async def test_a_thousand_simultaneous_requests_respect_burst_and_rate(self):
        rate, burst = 50.0, 100
        # All from one address: lift its connection cap (test_connection_guards.py tests it).
        config = config_toml(
            server="max_connections_per_address = 1000", source=f"rate = {rate}\nburst = {burst}"
        )
        async with run_daemon(config_text=config) as daemon:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(daemon.send("file.ready", wait=False) for _ in range(1000))
            )
            elapsed = time.monotonic() - started
        accepted = sum(a.status == 202 for a in answers)
        assert {a.status for a in answers} <= {202, 429}
        assert burst <= accepted <= burst + rate * elapsed + 1


def _signed(body: bytes) -> dict[str, str]:
    from frameiod.signature import sign

    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Frameio-Request-Timestamp": ts,
        "X-Frameio-Signature": sign(TEST_SECRET, body, ts),
    }


async def _post(daemon: RunningDaemon, client: str, secret: str = TEST_SECRET) -> int:
    from frameiod.events import example_payload
    from frameiod.signature import sign

    body = json.dumps(example_payload("file.ready")).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Forwarded-For": client,
        "X-Frameio-Request-Timestamp": ts,
        "X-Frameio-Signature": sign(secret, body, ts),
    }
    async with daemon._session.post(
        daemon.url("/webhooks/default"), data=body, headers=headers
    ) as response:
        return response.status
