"""infra/prometheus and infra/grafana, checked against the tools and against the metrics the service exports.

``promtool`` (Debian's ``prometheus`` package; ``make install`` adds it when root) checks the configuration and the
rules and runs the rules' unit tests. Every PromQL expression, in the rules and in the dashboard, may only name
series that a rendered :class:`rag.monitoring.metrics.ServiceMetrics` exposition really contains, or a recording rule
defined in the rules, or Prometheus' own ``up``: a renamed metric breaks this test instead of an empty panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from rag.monitoring.metrics import ServiceMetrics, exported_metric_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "infra" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))

PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for every target."""

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf",
    "nan", "le",
}  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _GROUPING.sub("", text)
    text = _RANGE.sub("", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in KEYWORDS and not re.fullmatch(r"\d.*", name)}


def rules() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


@cache
def exported() -> frozenset[str]:
    return frozenset(exported_metric_names(ServiceMetrics()))


def known_names() -> set[str]:
    recorded = {r["record"] for r in rules() if "record" in r}
    return set(exported()) | recorded | PROMETHEUS_OWN


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing: install Debian's prometheus package (`sudo apt-get install -y prometheus`)")
    return path


def test_the_name_extractor_sees_what_a_query_selects() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(ragops_request_duration_seconds_bucket{le=~"1(\\\\.0)?", '
        'route="/v1/query"}[5m]))) > 2 * ragops:error_ratio_5m offset 1h and on (job) up == 0'
    )
    assert metric_names(expr) == {"ragops_request_duration_seconds_bucket", "ragops:error_ratio_5m", "up"}


def test_there_are_rules_tests_and_a_dashboard() -> None:
    assert RULE_FILES and RULE_TESTS and DASHBOARDS
    assert {r["alert"] for r in rules() if "alert" in r} >= {
        "RagopsLatencyBudgetBurnFast", "RagopsLatencyBudgetBurnSlow", "RagopsLatencyP99High", "RagopsErrorRateHigh",
        "RagopsCostPerRequestHigh", "RagopsGuardrailBlockSurge", "RagopsThumbsDownShareHigh",
    }  # fmt: skip


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_rules_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    unknown = metric_names(rule["expr"]) - known_names()
    assert not unknown, f"{rule.get('alert') or rule.get('record')} uses series the service does not export: {unknown}"


@pytest.mark.parametrize("where,expr", dashboard_exprs(), ids=[w for w, _ in dashboard_exprs()])
def test_dashboard_queries_name_only_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: {expr!r} selects no metric"
    unknown = names - known_names()
    assert not unknown, f"{where} uses series the service does not export: {unknown}"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((REPO / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']}"


def test_every_exported_family_is_on_the_dashboard_or_in_a_rule() -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    used |= {name for r in rules() for name in metric_names(r["expr"])}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert not families - shown, f"exported but never shown or alerted on: {families - shown}"


def test_promtool_checks_the_config_and_rules() -> None:
    tool = promtool()
    result = subprocess.run(
        [tool, "check", "config", str(PROMETHEUS / "prometheus.yml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [tool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_every_alert() -> None:
    tool = promtool()
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts <= tested, f"alerts with no test that makes them fire: {alerts - tested}"
    result = subprocess.run([tool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
