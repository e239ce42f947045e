"""docs/grafana-dashboard.json and docs/prometheus-alerts.yml only query what frameiod exports.

Every PromQL expression in both files is checked against a real ``/metrics`` scrape of a
running daemon: each ``frameiod_*`` series name, each label a selector or ``by (...)`` names,
and each label value a selector matches must exist there. The rules file is read with
PyYAML's safe loader.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from frameiod import ActionEvent, App, Message, WebhookEvent
from frameiod.testing import run_daemon

DOCS = Path(__file__).resolve().parent.parent / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
ALERTS = DOCS / "prometheus-alerts.yml"

ALERT_NAMES = {
    "FrameiodDeadLetters",
    "FrameiodOldestPendingTooOld",
    "FrameiodRejectedSignaturesSurge",
    "FrameiodDown",
    "FrameiodConfigReloadFailed",
    "FrameiodDispatchPaused",
}
# Labels Prometheus attaches to every scraped series, which /metrics itself never shows.
TARGET_LABELS = {"job", "instance"}

Exported = dict[str, dict[str, set[str]]]  # sample name -> label name -> values seen


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every panel target's expression (rows' nested panels too) and variable query."""
    exprs = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules(rules_file: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules_file["groups"] for rule in group["rules"]]


_METRIC = re.compile(r"\b(?:frameiod|process)_[a-zA-Z0-9_]*[a-zA-Z0-9]\b")
_SELECTOR = re.compile(r"\b((?:frameiod|process)_\w+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    """The frameiod (and process collector) series names ``expr`` reads."""
    return set(_METRIC.findall(expr))


def base_name(name: str) -> str:
    """A histogram series' metric name: ``x_seconds_bucket`` -> ``x_seconds``."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def _matcher_problems(name: str, matchers: str, labels: dict[str, set[str]]) -> list[str]:
    """Labels ``name{matchers}`` names that the series lacks, and values it never has."""
    found = []
    rest = _MATCHER.sub("", matchers).strip()
    if rest:
        found.append(f"{name}: cannot read matchers {rest!r}")
    for label, op, value in _MATCHER.findall(matchers):
        if label in TARGET_LABELS:
            continue
        if label not in labels:
            found.append(f"{name} has no label {label!r}")
        elif "$" in value or op in ("!=", "!~"):
            continue
        elif op == "=" or re.fullmatch(r"[\w|]+", value):  # a plain value or alternation
            for wanted in value.split("|") if op == "=~" else [value]:
                if wanted not in labels[label]:
                    found.append(f"{name}{{{label}={wanted!r}}} never exists")
    return found


def problems(expr: str, exported: Exported) -> list[str]:
    """What ``expr`` asks for that the scrape does not have."""
    names = metric_names(expr)
    found = [f"{name} is not exported" for name in sorted(names - exported.keys())]
    for name, matchers in _SELECTOR.findall(expr):
        if name in exported:
            found.extend(_matcher_problems(name, matchers, exported[name]))
    known = {label for name in names for label in exported.get(name, {})} | TARGET_LABELS
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in known:
                found.append(f"no metric in the expression has label {label!r}")
    return found


# --- the scrape -------------------------------------------------------------------------------


def _plugin() -> App:
    app = App()

    @app.on_webhook("file.ready")
    async def on_ready(event: WebhookEvent) -> None:
        pass

    @app.on_webhook("file.ready", max_attempts=1)
    async def always_fails(event: WebhookEvent) -> None:
        raise RuntimeError("fails on purpose, to produce a dead letter")

    @app.on_action("acme.hello", name="Hello")
    async def hello(event: ActionEvent) -> Message:
        return Message("Hello", "from the dashboard test")

    return app


async def _scrape() -> str:
    async with run_daemon({"acme": _plugin()}) as daemon:
        for _ in range(2):
            sent = await daemon.send("file.ready")
            assert sent.status == 202
        assert (await daemon.act("acme.hello"))[0] == 200
        assert (await daemon.post(b"{}", secret="wrong-secret"))[0] == 401
        async with daemon._session.get(daemon.url("/metrics")) as response:
            assert response.status == 200
            return await response.text()


@pytest.fixture(scope="module")
def exported() -> Exported:
    """Sample name -> label -> values, from a daemon with handlers, an action and traffic."""
    samples: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(asyncio.run(_scrape())):
        for sample in family.samples:
            labels = samples[sample.name]
            for label, value in sample.labels.items():
                labels[label].add(value)
    return {name: dict(labels) for name, labels in samples.items()}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return alert_rules(yaml.safe_load(ALERTS.read_text()))


# --- the tests --------------------------------------------------------------------------------


class TestDashboard:
    def test_is_a_grafana_dashboard_on_a_templated_prometheus_datasource(self, dashboard):
        assert 36 <= dashboard["schemaVersion"] <= 41
        assert dashboard["title"]
        assert dashboard["uid"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource"
        assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

    def test_has_at_least_eight_panels_each_with_a_title_and_a_query(self, dashboard):
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len(panels) >= 8
        for panel in panels:
            assert panel.get("title"), panel
            assert any(t.get("expr") for t in panel.get("targets", [])), panel["title"]
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])

    def test_covers_every_frameiod_metric(self, dashboard, exported):
        """A metric added to frameiod without a panel shows up here."""
        shown = {base_name(n) for e in dashboard_queries(dashboard) for n in metric_names(e)}
        frameiod = {base_name(n).removesuffix("_total") for n in exported if "frameiod_" in n}
        assert frameiod - {s.removesuffix("_total") for s in shown} == set()

    def test_queries_only_what_frameiod_exports(self, dashboard, exported):
        queries = dashboard_queries(dashboard)
        assert all(metric_names(q) for q in queries if not q.startswith("up"))
        found = {q: problems(q, exported) for q in queries}
        assert {q: p for q, p in found.items() if p} == {}

    def test_a_metric_frameiod_does_not_export_fails(self, dashboard, exported):
        broken = copy.deepcopy(dashboard)
        panel = next(p for p in broken["panels"] if p.get("targets"))
        panel["targets"].append({"refId": "Z", "expr": "rate(frameiod_bogus_total[5m])"})
        panel["targets"].append(
            {"refId": "Y", "expr": 'sum by (nope) (frameiod_spool_deliveries{state="lost"})'}
        )
        found = [p for q in dashboard_queries(broken) for p in problems(q, exported)]
        assert found == [
            "frameiod_bogus_total is not exported",
            "frameiod_spool_deliveries{state='lost'} never exists",
            "no metric in the expression has label 'nope'",
        ]


class TestAlerts:
    def test_defines_every_alert_completely(self, rules):
        assert {rule["alert"] for rule in rules} == ALERT_NAMES
        for rule in rules:
            assert rule["expr"].strip(), rule["alert"]
            assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"].strip(), rule["alert"]
            assert rule["annotations"]["description"].strip(), rule["alert"]

    def test_queries_only_what_frameiod_exports(self, rules, exported):
        assert {r["alert"]: problems(r["expr"], exported) for r in rules} == {
            name: [] for name in ALERT_NAMES
        }

    def test_alert_thresholds(self, rules):
        by_name = {rule["alert"]: rule for rule in rules}
        dead = by_name["FrameiodDeadLetters"]["expr"]
        assert 'increase(frameiod_handler_runs_total{outcome="dead"}[15m])' in dead
        assert 'frameiod_spool_deliveries{state="dead"}' in dead
        assert by_name["FrameiodOldestPendingTooOld"]["expr"].endswith("> 300")
        assert by_name["FrameiodOldestPendingTooOld"]["for"] == "5m"
        surge = by_name["FrameiodRejectedSignaturesSurge"]
        assert 'outcome=~"bad_signature|stale"' in surge["expr"]
        assert surge["for"] == "10m"
        assert by_name["FrameiodDown"]["expr"] == 'up{job="frameiod"} == 0'
        assert by_name["FrameiodDown"]["for"] == "2m"
        paused = by_name["FrameiodDispatchPaused"]
        assert (paused["expr"], paused["for"]) == (
            "max by (job, instance) (frameiod_dispatch_paused) == 1",
            "2m",
        )
        reload_failed = by_name["FrameiodConfigReloadFailed"]["expr"]
        assert reload_failed == 'increase(frameiod_config_reloads_total{outcome="error"}[10m]) > 0'
