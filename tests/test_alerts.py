"""The shipped alert rules (deploy/prometheus/rules.yml) and Alertmanager example, checked and
unit-tested with Debian's promtool and amtool; end to end in test_monitoring.py."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from helpers.monitoring import (
    ALERTMANAGER_EXAMPLE,
    MONITORING_DOC,
    RULES,
    RULES_TESTS,
    alert_rules,
    promql_metric_names,
    tool,
)

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules() -> None:
    out = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = run(tool("promtool", "prometheus"), "test", "rules", str(RULES_TESTS))
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_documented_and_says_what_to_look_at_first() -> None:
    tested = RULES_TESTS.read_text()
    doc = MONITORING_DOC.read_text()
    pointers = re.compile(r"`[a-z_]+_[a-z_]+`|tbmirror status|/healthz")  # a log event, ...
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    for rule in alert_rules():
        name, annotations = rule["alert"], rule["annotations"]
        assert f'alertname="{name}"' in tested or f"alertname: {name}" in tested, name
        assert f"`{name}`" in doc, f"{name} is not described in {MONITORING_DOC.name}"
        assert annotations["summary"] and "\n" not in annotations["summary"], name
        assert pointers.search(annotations["description"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name


def test_every_rule_reads_only_the_daemons_metrics_or_up() -> None:
    for rule in alert_rules():
        for metric in promql_metric_names(rule["expr"]):
            assert metric == "up" or metric.startswith(("tbmirror_", "process_")), metric


def test_promql_metric_names_finds_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, source) (rate(a_bucket{source=~"$source"}'
        "[$__rate_interval]))) / on (instance) group_left b_total > bool 2 or absent(up)"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "up"}


def test_the_alertmanager_example_is_valid_and_routes_tbmirror_alerts_with_resolved() -> None:
    run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER_EXAMPLE))
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    (route,) = config["route"]["routes"]
    hooks = receivers[route["receiver"]]["webhook_configs"]
    assert hooks and all(hook["send_resolved"] for hook in hooks)
    routed = run(
        tool("amtool", "prometheus-alertmanager"), "config", "routes", "test",
        f"--config.file={ALERTMANAGER_EXAMPLE}", "alertname=TbmirrorSourceStale", "source=a",
    )  # fmt: skip
    assert routed.strip() == route["receiver"]
