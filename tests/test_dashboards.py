"""docs/grafana-dashboard.json and docs/prometheus-alerts.yml only query what frameiod exports.

Every PromQL expression in both files is checked against a real ``/metrics`` scrape of a
running daemon: each ``frameiod_*`` series name, each label a selector or ``by (...)`` names,
and each label value a selector matches must exist there. PyYAML is not a dependency, so the
rules file is read with a parser for the block-style subset it is written in; anything
outside that subset is an error rather than silently skipped.
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


# --- a parser for the block-style YAML subset the rules file uses ---------------------

_KEY = re.compile(r"([A-Za-z_][\w.-]*):(?: +(.*))?")
_BLOCK_STYLES = {"|": "\n", "|-": "\n", ">": " ", ">-": " "}


class YamlSubsetError(ValueError):
    """The text uses YAML the subset parser does not read."""


class _YamlSubset:
    """Block mappings, block sequences, ``|``/``>`` block scalars and one-line scalars."""

    def __init__(self, text: str) -> None:
        if "\t" in text:
            raise YamlSubsetError("tabs are not supported")
        self.lines = text.splitlines()
        self.i = 0

    def parse(self) -> Any:
        root = self._node(self._indent())
        if self._indent() != -1:
            raise YamlSubsetError(f"line {self.i + 1}: unexpected indentation")
        return root

    def _indent(self) -> int:
        """Column of the next content line (skipping blanks and comments); -1 at the end."""
        while self.i < len(self.lines):
            stripped = self.lines[self.i].strip()
            if stripped and not stripped.startswith("#"):
                return len(self.lines[self.i]) - len(self.lines[self.i].lstrip(" "))
            self.i += 1
        return -1

    def _is_item(self, indent: int) -> bool:
        return self.lines[self.i][indent:].startswith("- ")

    def _node(self, indent: int) -> Any:
        if self._is_item(indent):
            items = []
            while self._indent() == indent and self._is_item(indent):
                # "- key: v" becomes "  key: v": the item is the block at indent + 2.
                self.lines[self.i] = " " * (indent + 2) + self.lines[self.i][indent + 2 :]
                items.append(self._node(indent + 2))
            return items
        if not _KEY.fullmatch(self.lines[self.i][indent:]):
            value = _scalar(self.lines[self.i][indent:])
            self.i += 1
            return value
        mapping: dict[str, Any] = {}
        while self._indent() == indent and not self._is_item(indent):
            match = _KEY.fullmatch(self.lines[self.i][indent:])
            if not match:
                raise YamlSubsetError(f"line {self.i + 1}: expected 'key: value'")
            key, value = match[1], (match[2] or "").strip()
            if key in mapping:
                raise YamlSubsetError(f"line {self.i + 1}: duplicate key {key!r}")
            self.i += 1
            if value in _BLOCK_STYLES:
                mapping[key] = self._block(indent, value)
            elif value and not value.startswith("#"):
                mapping[key] = _scalar(value)
            else:
                child = self._indent()
                nested = child > indent or (child == indent and self._is_item(indent))
                mapping[key] = self._node(child) if nested else None
        return mapping

    def _block(self, indent: int, style: str) -> str:
        body: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            body.append(line)
            self.i += 1
        while body and not body[-1].strip():
            body.pop()
        margin = min(len(line) - len(line.lstrip(" ")) for line in body if line.strip())
        text = _BLOCK_STYLES[style].join(line[margin:] for line in body)
        return text if style.endswith("-") else text + "\n"


def _scalar(text: str) -> str:
    if text[0] in "\"'":
        pattern = r'"(?:[^"\\]|\\.)*"' if text[0] == '"' else r"'(?:[^']|'')*'"
        quoted = re.match(pattern, text)
        after = text[quoted.end() :].strip() if quoted else "?"
        if not quoted or (after and not after.startswith("#")):
            raise YamlSubsetError(f"bad quoted scalar: {text}")
        return json.loads(quoted[0]) if text[0] == '"' else quoted[0][1:-1].replace("''", "'")
    if text[0] in "{[&*!%@`|>":
        raise YamlSubsetError(f"unsupported YAML construct: {text}")
    return re.split(r"\s+#", text, maxsplit=1)[0].strip()


def parse_yaml_subset(text: str) -> Any:
    return _YamlSubset(text).parse()


# --- what the documents query -------------------------------------------------------------


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
    return alert_rules(parse_yaml_subset(ALERTS.read_text()))


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


class TestYamlSubset:
    def test_reads_mappings_sequences_block_and_quoted_scalars(self):
        text = """\
# a comment
groups:
- name: g   # trailing comment
  rules:
    - alert: A
      expr: |
        sum(x)
          > 0

      for: 5m
      labels:
        severity: 'it''s'
      annotations:
        summary: "a \\"quoted\\" {{ $value }}"
        description: >-
          folded
          text
"""
        assert parse_yaml_subset(text) == {
            "groups": [
                {
                    "name": "g",
                    "rules": [
                        {
                            "alert": "A",
                            "expr": "sum(x)\n  > 0\n",
                            "for": "5m",
                            "labels": {"severity": "it's"},
                            "annotations": {
                                "summary": 'a "quoted" {{ $value }}',
                                "description": "folded text",
                            },
                        }
                    ],
                }
            ]
        }

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("a: {b: 1}\n", "unsupported"),  # flow mapping
            ("a: [1, 2]\n", "unsupported"),  # flow sequence
            ("a: *anchor\n", "unsupported"),
            ("a: 1\na: 2\n", "duplicate key"),
            ("a:\n  b: 1\n c: 2\n", "unexpected indentation"),
            ("a:\n\tb: 1\n", "tabs"),
            ('a: "open\n', "bad quoted scalar"),
        ],
    )
    def test_refuses_what_it_does_not_understand(self, text, error):
        with pytest.raises(YamlSubsetError, match=error):
            parse_yaml_subset(text)
