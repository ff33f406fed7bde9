"""What the monitoring tests share: the shipped files, the Debian tools they run, and the metric
names a PromQL expression or a /metrics scrape holds."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TESTS = REPO / "deploy" / "prometheus" / "rules.test.yml"
ALERTMANAGER_EXAMPLE = REPO / "deploy" / "prometheus" / "alertmanager.example.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tbmirror.json"
MONITORING_DOC = REPO / "docs" / "operations" / "monitoring.md"

# Series Prometheus makes itself, not the daemon.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def tool(name: str, package: str) -> str:
    """The path of a command from a Debian package; CI (CI=true, where .ci/run installs it)
    fails without it, elsewhere the test is skipped naming the package."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install --no-install-recommends {package}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, label names, keywords, strings,
    durations or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    names = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", text)
    return {name for name in names if name.lower() not in _KEYWORDS}


def exposed_names(exposition: str) -> set[str]:
    """Every series name a /metrics text can hold: its samples' names, and for a family with no
    samples yet (a labelled counter before its first increment) the names it will have."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names
