"""The Grafana dashboard and the Prometheus alert rules name metrics that exist.

Every metric name in an expression of the dashboard (panels and variables) and
of the rules must be among what a real daemon's endpoint serves (provisioning.
metrics, scraped over HTTP), or ``up`` (Prometheus's own for every target);
every label they group or match by must be one those metrics carry, or a
target's (job, instance). A renamed metric fails here, not on an operator's
empty graph.
"""
from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from provisioning.observe.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[1] / "etc/monitoring"
DASHBOARD = MONITORING / "provisioning-dashboard.json"
RULES = MONITORING / "provisioning-alerts.yml"
PROMETHEUS_OWN = {"up"}                       # made by Prometheus for each scrape target
TARGET_LABELS = {"job", "instance"}
# PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """Every sample name the endpoint serves, with the labels it carries."""
    metrics = Metrics(service="Backup/Rsnapshot", version="0.1.0")
    port = _free_port()
    metrics.serve("127.0.0.1", port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    found += [v["definition"] for v in board["templating"]["list"] if v.get("type") == "query"]
    return found


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: what is left once strings, label matchers, grouping
    clauses, ranges, numbers and functions are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"(\1)", expr)     # Grafana's: (metric, label)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in KEYWORDS:
            continue                                  # a function or aggregation, or an operator
        if match.start() and expr[match.start() - 1].isdigit():
            continue                                  # a unit: 5m, 1h
        names.add(match.group())
    return names


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(name.strip() for name in clause.split(",") if name.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    # label_values(metric, label)
    labels.update(re.findall(r"label_values\([^,]+,\s*([A-Za-z_][A-Za-z0-9_]*)\)", expr))
    return labels


def test_the_scrape_has_the_metrics_the_docs_name(served):
    for name in ("provisioning_requests_total", "provisioning_request_duration_seconds_bucket",
                 "provisioning_lag_seconds", "provisioning_deletions_held", "process_resident_memory_bytes"):
        assert name in served


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_and_label_named_exists(served, source):
    expressions = dashboard_expressions() if source == "dashboard" else rule_expressions()
    assert len(expressions) >= 8
    known_labels = set().union(*served.values()) | TARGET_LABELS
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        unknown = names - set(served) - PROMETHEUS_OWN
        assert not unknown, f"{expr}: no such metric {sorted(unknown)}"
        assert grouping_labels(expr) <= known_labels, f"{expr}: labels {grouping_labels(expr) - known_labels}"


def test_the_name_check_catches_a_misspelt_metric(served):
    assert metric_names('sum by (verb) (rate(provisioning_request_total{outcome="failed"}[5m])) > 0') == {
        "provisioning_request_total"}
    assert "provisioning_request_total" not in served


def test_every_rule_has_a_severity_and_a_summary():
    rules = yaml.safe_load(RULES.read_text())
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_is_importable():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
