"""The hot series kept as plain numbers expose exactly what prometheus_client's own would."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from frameiod.metrics import _ACK_BUCKETS, _HANDLER_BUCKETS, Metrics
from frameiod.plugins.handlers import Outcome, WebhookHandler

# Bounds themselves included: a value equal to a bound belongs to that bound's bucket.
ACKS = [("default", "accepted", s) for s in (0.0001, 0.0005, 0.0007, 0.001, 0.2, 5.0, 7.0)]
ACKS += [("elsewhere", "unknown_source", 0.01), ("default", "stale", 0.002)]
CALLS = [("ok", 0.005, False), ("ok", 0.004, False), ("error", 31.0, False)]
CALLS += [("timeout", 100.0, False), ("error", 0.3, True)]


def _samples(registry: Any, names: set[str]) -> set[tuple[str, tuple, float]]:
    """The samples of the families ``names``, but their ``_created`` series, which
    frameiod's scrape leaves out (see the test below)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        if family.name in names
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_hot_series_match_prometheus_clients_own_counters_and_histograms() -> None:
    metrics = Metrics(["default"], "test")

    async def handle(event: object) -> None:
        return None

    metrics.register_handlers([WebhookHandler(func=handle, event_types=("*",), plugin="p")])
    for source, outcome, seconds in ACKS:
        metrics.received(source, outcome, seconds)
    for status, seconds, dead in CALLS:
        metrics.handler_finished("p", "handle", Outcome(status, seconds), dead=dead)  # type: ignore[arg-type]

    reference = CollectorRegistry()
    received = Counter(
        "frameiod_deliveries_received", "", ["source", "outcome"], registry=reference
    )
    acks = Histogram("frameiod_ack_seconds", "", buckets=_ACK_BUCKETS, registry=reference)
    runs = Counter(
        "frameiod_handler_runs", "", ["plugin", "handler", "outcome"], registry=reference
    )
    durations = Histogram(
        "frameiod_handler_seconds",
        "",
        ["plugin", "handler"],
        buckets=_HANDLER_BUCKETS,
        registry=reference,
    )
    for outcome in ("accepted", "duplicate", "bad_signature", "stale", "malformed"):
        received.labels("default", outcome)
    for outcome in ("too_large", "too_slow", "rate_limited", "unavailable"):
        received.labels("default", outcome)
    received.labels("unknown", "malformed")  # HTTP the parser refuses names no source
    for source, outcome, seconds in ACKS:
        received.labels("unknown" if source != "default" else source, outcome).inc()
        acks.observe(seconds)
    for outcome in ("ok", "error", "timeout", "dead"):
        runs.labels("p", "handle", outcome)
    for status, seconds, dead in CALLS:
        runs.labels("p", "handle", "dead" if dead else status).inc()
        durations.labels("p", "handle").observe(seconds)

    names = {
        "frameiod_deliveries_received",
        "frameiod_ack_seconds",
        "frameiod_handler_runs",
        "frameiod_handler_seconds",
    }
    ours = _samples(metrics.exposed, names)
    assert ours == _samples(reference, names)
    assert ("frameiod_ack_seconds_bucket", (("le", "0.0005"),), 2.0) in ours
    assert ("frameiod_ack_seconds_count", (), 9.0) in ours


def test_created_series_are_left_out_of_frameiods_scrape_and_nowhere_else() -> None:
    """frameiod's /metrics carries no ``*_created`` series, and importing frameiod leaves
    every other registry in the process (a plugin's) as prometheus_client makes it."""
    metrics = Metrics(["default"], "test")
    metrics.rate_limited.labels(source="default").inc()
    ours = generate_latest(metrics.exposed).decode()
    assert 'frameiod_rate_limited_total{source="default"} 1.0' in ours
    assert "_created" not in ours
    theirs = CollectorRegistry()
    Counter("plugin_things", "A plugin's own counter", registry=theirs).inc()
    assert "plugin_things_created" in generate_latest(theirs).decode()
