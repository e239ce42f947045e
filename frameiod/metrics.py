"""Every Prometheus metric frameiod exports, on one injected registry.

Label values come only from bounded sets: configured source names (anything else is
``unknown``) and the fixed outcome words below, all pre-initialised so each series
exists at 0 from the start.

The four series touched on every event (requests received and their ack time, handler
calls and their duration) are plain numbers published at scrape time (`_Counts`,
`_Durations`): prometheus_client's metric objects take a lock per increment and scan the
buckets in Python, a cost every event would pay. Only the event loop's thread updates or
reads them.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import RestrictedRegistry
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from frameiod.plugins.handlers import ActionHandler, Outcome, WebhookHandler
    from frameiod.plugins.manager import PluginInfo

__all__ = [
    "ACTION_OUTCOMES",
    "ACTION_REJECTIONS",
    "ADMIN_ACTIONS",
    "ADMIN_OUTCOMES",
    "CONNECTION_REFUSALS",
    "HANDLER_OUTCOMES",
    "RECEIVE_OUTCOMES",
    "UNKNOWN_SOURCE",
    "Metrics",
]

RECEIVE_OUTCOMES = (
    "accepted",
    "duplicate",
    "bad_signature",
    "stale",
    "malformed",
    "too_large",
    "too_slow",
    "rate_limited",
    "unknown_source",
    "unavailable",
)
HANDLER_OUTCOMES = ("ok", "error", "timeout", "dead")
UNAUTHENTICATED_REASONS = (
    "bad_signature",
    "stale",
    "malformed",
    "too_large",
    "address_limited",
    "admin_token",
)
# The admin API's requests: what was asked, and how it was answered.
ADMIN_ACTIONS = ("stats", "list", "show", "replay", "purge")
ADMIN_OUTCOMES = ("ok", "bad_request", "unauthorized", "not_found", "rate_limited", "unavailable")
ACTION_OUTCOMES = ("ok", "error", "late", "duplicate", "unsupported_resource", "unknown_action")
# Why a request to /actions/{source} was refused before its action was known: the
# webhook route's refusals, counted apart so that series stays webhooks only.
ACTION_REJECTIONS = tuple(o for o in RECEIVE_OUTCOMES if o not in ("accepted", "duplicate"))
UNKNOWN_SOURCE = "unknown"
CONNECTION_REFUSALS = (
    "max_connections",
    "per_address",
    "idle_evicted",
    "header_timeout",
    "idle_timeout",
)

# Acknowledgements must stay far inside Frame.io's 5 s window; resolve the fast end finely.
_ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Counts:
    """A counter family as plain numbers by label values."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def create(self, *key: str) -> None:
        """Make the series with these label values exist, at 0."""
        self.values.setdefault(key, 0)

    def inc(self, key: tuple[str, ...]) -> None:
        """Count one in the series with these label values."""
        self.values[key] = self.values.get(key, 0) + 1

    def family(self) -> CounterMetricFamily:
        """The series as prometheus_client exposes them."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class _Durations:
    """A histogram family as plain lists: per series, one count per bucket, then the sum."""

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[float]] = {}

    def create(self, *key: str) -> list[float]:
        """The series with these label values, made at 0 if new."""
        series = self.series.get(key)
        if series is None:
            # One count per bound, one for +Inf, then the sum.
            series = self.series[key] = [0.0] * (len(self.bounds) + 2)
        return series

    def observe(self, series: list[float], value: float) -> None:
        """Count ``value`` in the first bucket whose bound it does not exceed."""
        series[bisect.bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        """The series as prometheus_client exposes them (cumulative buckets)."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        les = [*map(floatToGoString, self.bounds), "+Inf"]
        for key, series in self.series.items():
            cumulative = list(itertools.accumulate(series[:-1]))
            family.add_metric(key, list(zip(les, cumulative, strict=True)), series[-1])
        return family


class _Published:
    """Hands `_Counts` and `_Durations` to the registry at each scrape."""

    def __init__(self, *families: _Counts | _Durations) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """Every family, as it stands now."""
        for family in self._families:
            yield family.family()

    def describe(self) -> Iterator[Metric]:
        """The same, so the registry refuses another metric of one of these names."""
        return self.collect()


class _WithoutCreated:
    """A registry as scraped: every metric but its ``_created`` series.

    They double the scrape size and no dashboard of ours reads them. Left out here, at
    scrape time, rather than with prometheus_client's ``disable_created_metrics()``, which
    switches them off for every registry in the process, plugins' included.
    """

    def __init__(self, registry: CollectorRegistry | RestrictedRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """The registry's metrics, each collected anew, without their ``_created`` samples."""
        for metric in self._registry.collect():
            created = metric.name + "_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric

    def restricted_registry(self, names: Iterable[str]) -> _WithoutCreated:
        """Only the series named (a scrape's ``name[]`` parameters)."""
        assert isinstance(self._registry, CollectorRegistry), "restricted already"
        return _WithoutCreated(self._registry.restricted_registry(names))


class Metrics:
    """The metric objects, registered on ``registry`` (a fresh one per daemon or test)."""

    def __init__(
        self, sources: Iterable[str], version: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.exposed = _WithoutCreated(self.registry)
        """What ``/metrics`` serves: the registry without its ``_created`` series."""
        self.sources: set[str] = set()
        self._actions: set[tuple[str, str]] = set()
        self.deliveries_received = _Counts(
            "frameiod_deliveries_received",
            "Requests to /webhooks/{source}, by how they were answered",
            ("source", "outcome"),
        )
        self.ack_seconds = _Durations(
            "frameiod_ack_seconds",
            "Time from request start to the answer, for webhook requests",
            (),
            _ACK_BUCKETS,
        )
        self._ack_series = self.ack_seconds.create()
        self.build_info = Gauge(
            "frameiod_build_info", "frameiod version", ["version"], registry=self.registry
        )
        self.build_info.labels(version=version).set(1)
        self.handler_runs = _Counts(
            "frameiod_handler_runs",
            "Handler calls, by how they ended",
            ("plugin", "handler", "outcome"),
        )
        self.handler_seconds = _Durations(
            "frameiod_handler_seconds",
            "Duration of handler calls",
            ("plugin", "handler"),
            _HANDLER_BUCKETS,
        )
        self.registry.register(
            _Published(
                self.deliveries_received,
                self.ack_seconds,
                self.handler_runs,
                self.handler_seconds,
            )
        )
        self.plugins = Gauge(
            "frameiod_plugins",
            "Discovered plugins (1 per plugin), by status",
            ["plugin", "version", "status"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "frameiod_rate_limited",
            "Verified deliveries refused with 429 because their source was over its rate",
            ["source"],
            registry=self.registry,
        )
        self.unauthenticated_rejected = Counter(
            "frameiod_unauthenticated_rejected",
            "Refused requests counted against the sender's address, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in UNAUTHENTICATED_REASONS:
            self.unauthenticated_rejected.labels(reason=reason)
        self.admin_requests = Counter(
            "frameiod_admin_requests",
            "Requests to the admin API ([admin]), by action and how they were answered",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "frameiod_connections_refused",
            "Connections closed before a request was served: over max_connections or "
            "max_connections_per_address, closed idle to make room for a new one at "
            "max_connections, or no complete request head within read_timeout",
            ["reason"],
            registry=self.registry,
        )
        for reason in CONNECTION_REFUSALS:
            self.connections_refused.labels(reason=reason)
        self.unrouted_requests = Counter(
            "frameiod_unrouted_requests",
            "Requests to the webhook listener that no route serves (404, 405)",
            ["status"],
            registry=self.registry,
        )
        for status in ("404", "405"):
            self.unrouted_requests.labels(status=status)
        self.config_reloads = Counter(
            "frameiod_config_reloads",
            "Configuration reloads (SIGHUP), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self.config_reloads.labels(outcome=outcome)
        self.actions = Counter(
            "frameiod_actions",
            "Custom-action requests that passed verification, by how they were answered",
            ["source", "action", "outcome"],
            registry=self.registry,
        )
        self.actions_rejected = Counter(
            "frameiod_actions_rejected",
            "Requests to /actions/{source} refused before a handler was chosen, by why",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.actions_rejected.labels(source=UNKNOWN_SOURCE, outcome="unknown_source")
        self.spool_deliveries = Gauge(
            "frameiod_spool_deliveries",
            "Deliveries in the spool, by state",
            ["state"],
            registry=self.registry,
        )
        for state in ("pending", "running", "done", "dead"):
            self.spool_deliveries.labels(state=state)
        self.spool_oldest_pending = Gauge(
            "frameiod_spool_oldest_pending_seconds",
            "How long the oldest due pending delivery has been waiting",
            registry=self.registry,
        )
        self.dispatch_paused = Gauge(
            "frameiod_dispatch_paused",
            "1 while dispatching waits for the spool to take writes again (disk full, Redis "
            "refusing writes), else 0",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.deliveries_received.create(UNKNOWN_SOURCE, "unknown_source")
        # HTTP the parser refuses has no route, so no source to name.
        self.deliveries_received.create(UNKNOWN_SOURCE, "malformed")
        self.add_sources(sources)

    def add_sources(self, sources: Iterable[str]) -> None:
        """Accept ``sources`` as label values and create their series at 0."""
        for source in sources:
            self.sources.add(source)
            for outcome in RECEIVE_OUTCOMES:
                if outcome != "unknown_source":
                    self.deliveries_received.create(source, outcome)
            self.rate_limited.labels(source=source)
            for outcome in ACTION_REJECTIONS:
                if outcome != "unknown_source":
                    self.actions_rejected.labels(source=source, outcome=outcome)

    def register_plugins(self, plugins: Iterable[PluginInfo]) -> None:
        """Publish each plugin's status and create its handlers' series at 0."""
        for info in plugins:
            self.plugins.labels(
                plugin=info.name, version=info.version or "", status=info.status
            ).set(1)

    def register_handlers(self, handlers: Iterable[WebhookHandler]) -> None:
        """Create every handler's series at 0, so rates work from the first scrape."""
        for handler in handlers:
            for outcome in HANDLER_OUTCOMES:
                self.handler_runs.create(handler.plugin, handler.name, outcome)
            self.handler_seconds.create(handler.plugin, handler.name)

    def register_actions(self, actions: Iterable[ActionHandler]) -> None:
        """Accept these actions as label values and create their series at 0."""
        for action in actions:
            self._actions.add((action.source, action.action))
            for outcome in ACTION_OUTCOMES:
                if outcome != "unknown_action":
                    self.actions.labels(source=action.source, action=action.action, outcome=outcome)

    def action(self, source: str, action: str, outcome: str) -> None:
        """Count one answered custom action; unregistered names become ``unknown``."""
        if (source, action) not in self._actions:
            action = UNKNOWN_SOURCE
        if source not in self.sources:
            source = UNKNOWN_SOURCE
        self.actions.labels(source=source, action=action, outcome=outcome).inc()

    def action_rejected(self, source: str, outcome: str) -> None:
        """Count one refused custom-action request; unconfigured sources become ``unknown``."""
        label = source if source in self.sources else UNKNOWN_SOURCE
        self.actions_rejected.labels(source=label, outcome=outcome).inc()

    def handler_finished(
        self, plugin: str, handler: str, outcome: Outcome, dead: bool = False
    ) -> None:
        """Count one handler call and its duration; a last failed attempt counts as ``dead``."""
        self.handler_runs.inc((plugin, handler, "dead" if dead else outcome.status))
        durations = self.handler_seconds
        durations.observe(durations.create(plugin, handler), outcome.seconds)

    def spool(self, counts: dict[str, int], oldest_pending: float) -> None:
        """Publish the spool's depth (from `frameiod.store.sqlite.Spool.gauges`)."""
        for state, count in counts.items():
            self.spool_deliveries.labels(state=state).set(count)
        self.spool_oldest_pending.set(oldest_pending)

    def received(self, source: str, outcome: str, seconds: float) -> None:
        """Count one answered webhook request; unconfigured source names become ``unknown``."""
        label = source if source in self.sources else UNKNOWN_SOURCE
        self.deliveries_received.inc((label, outcome))
        self.ack_seconds.observe(self._ack_series, seconds)
