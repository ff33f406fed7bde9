"""Monitoring end to end, with real parts: a real Prometheus scrapes a real `tbmirror run` (over a
real mlflow server) and evaluates the SHIPPED rules (deploy/prometheus/rules.yml, only their
`for:` shortened); a real Alertmanager runs the shipped example route towards the test's own
webhook. The daemon reaches the session's mlflow server through a proxy whose port closes: the
stale-source alert goes pending, firing, and reaches the webhook; the port opens again: the alert
resolves and the webhook hears so.

The same Prometheus (started once: one test) answers every query of the Grafana dashboard, and
the daemon's /metrics holds every metric the rules, the dashboard and the docs name.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tbmirror
from conftest import (
    DaemonProcess,
    MlflowServer,
    daemon_config,
    mlflow_source,
    wait_until,
    write_config,
)
from helpers.hostile_proxy import HostileProxy
from helpers.monitoring import (
    ALERTMANAGER_EXAMPLE,
    DASHBOARD,
    MONITORING_DOC,
    PROMETHEUS_SERIES,
    RULES,
    Alertmanager,
    Prometheus,
    Webhook,
    alert_rules,
    exposed_names,
    promql_metric_names,
)
from tbmirror.engine.base import PassReport
from tbmirror.service.metrics import DaemonMetrics

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)

SOURCE = "team"
STALE_AFTER = 6.0  # health.stale_after of the daemon: exported, and read by the stale rule
FOR = "2s"  # every rule's `for:` in the test (the shipped ones are minutes)


def rendered_rules(directory: Path) -> Path:
    """The shipped rules with every `for:` set to FOR: nothing else changes."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def alertmanager_config(webhook: Webhook) -> dict[str, Any]:
    """The shipped example route, its webhook pointed at `webhook`, its waits shortened."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    route = config["route"]["routes"][0]
    route.update(group_wait="1s", group_interval="1s")
    (receiver,) = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    receiver["webhook_configs"][0]["url"] = webhook.url
    return config


class Stack:
    """mlflow server -> proxy (`door`) -> tbmirror run -> Prometheus -> Alertmanager -> webhook."""

    def __init__(self, directory: Path, stack: ExitStack, mlflow: MlflowServer) -> None:
        self.mlflow = mlflow
        self.door = HostileProxy(mlflow.url)
        stack.callback(lambda: self.door.close())  # (the last one opened)
        client = self.mlflow.client()
        self.experiment = f"monitoring-{time.time_ns()}"
        run_id = client.create_run(client.create_experiment(self.experiment)).info.run_id
        for step in range(20):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        config, _, self.health_url = daemon_config(
            directory / "tbmirror.yaml", directory / "root",
            [mlflow_source(SOURCE, self.door.url, [self.experiment], poll_interval="1s",
                           max_retries=0)],
            health={"stale_after": f"{STALE_AFTER:g}s"},
        )  # fmt: skip
        self.daemon = DaemonProcess(config, directory / "daemon.log")
        stack.callback(self.daemon.cleanup)
        self.daemon.wait_event("source_synced", timeout=120, source=SOURCE)
        self.webhook = Webhook()
        stack.callback(self.webhook.stop)
        self.alertmanager = Alertmanager(directory, alertmanager_config(self.webhook))
        stack.callback(self.alertmanager.stop)
        self.target = self.health_url.removeprefix("http://")
        self.prometheus = Prometheus(
            directory, [self.target], rendered_rules(directory),
            f"127.0.0.1:{self.alertmanager.port}",
        )  # fmt: skip
        stack.callback(self.prometheus.stop)

    def cut_off(self) -> None:
        """The server out of the daemon's reach: the proxy's port closes."""
        self.door.close()

    def reconnect(self) -> None:
        """The server back within reach, on the same port."""
        self.door = HostileProxy(self.mlflow.url, port=int(self.door.url.rsplit(":", 1)[1]))

    def scrape(self) -> str:
        return httpx.get(f"{self.health_url}/metrics", timeout=10).text

    def wait(
        self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2
    ) -> Any:
        """wait_until, failing with what Prometheus and the webhook hold at the deadline."""
        try:
            return wait_until(predicate, timeout, what, every)
        except AssertionError as error:
            raise AssertionError(f"{error}; saw {self.seen()}") from None

    def seen(self) -> str:
        """What Prometheus and the webhook hold now, for a failed wait's message."""
        alerts = self.prometheus.http.get("/api/v1/alerts").json()["data"]["alerts"]
        states = [(a["labels"]["alertname"], a["labels"].get("source"), a["state"]) for a in alerts]
        return f"alerts {states}; webhook {json.dumps(self.webhook.notifications)[-1500:]}"


@pytest.fixture
def stack(tmp_path: Path, mlflow_server: MlflowServer) -> Iterator[Stack]:
    with ExitStack() as cleanup:
        yield Stack(tmp_path, cleanup, mlflow_server)


def documented_metrics() -> dict[str, set[str]]:
    """Metric name -> its labels, from the reference table of docs/operations/monitoring.md."""
    rows = re.findall(r"^\| `([a-z_:]+)` \| \w+ \|([^|]*)\|", MONITORING_DOC.read_text(), re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_alerts_reach_the_webhook_and_resolve_and_every_advertised_metric_is_real(
    stack: Stack,
) -> None:
    prometheus, webhook = stack.prometheus, stack.webhook
    stack.wait(
        lambda: prometheus.query('up{job="tbmirror"} == 1')["data"]["result"], 30,
        "Prometheus to scrape the daemon",
    )  # fmt: skip
    check_the_scrape_holds_every_metric_named(stack.scrape())
    check_idle_passes_leave_no_info_line(stack)

    stack.cut_off()
    states = []

    def stale_state(wanted: str) -> bool:
        alerts = [a for a in prometheus.alerts("TbmirrorSourceStale")
                  if a["labels"]["source"] == SOURCE]  # fmt: skip
        states.extend(a["state"] for a in alerts if a["state"] not in states)
        return any(a["state"] == wanted for a in alerts)

    stack.wait(lambda: stale_state("pending"), 30, "a pending stale alert", 0.1)
    stack.wait(lambda: stale_state("firing"), 30, "the stale alert firing")
    assert states == ["pending", "firing"]
    stack.wait(
        lambda: prometheus.query(f'tbmirror_source_degraded{{source="{SOURCE}"}} == 1')["data"][
            "result"
        ],
        10, "the source reported degraded",
    )  # fmt: skip
    (fired, *_) = stack.wait(
        lambda: webhook.alerts("TbmirrorSourceStale", "firing"), 30,
        "the webhook to hear of the firing alert",
    )  # fmt: skip
    assert fired["labels"]["source"] == SOURCE and fired["labels"]["severity"] == "warning"
    assert (
        f"tbmirror source {SOURCE} has had no successful pass for"
        in fired["annotations"]["summary"]
    )
    assert "tbmirror status" in fired["annotations"]["description"]

    stack.reconnect()
    stack.wait(
        lambda: not prometheus.alerts("TbmirrorSourceStale"), 60,
        "the stale alert to end once mlflow is back in reach",
    )  # fmt: skip
    (resolved, *_) = stack.wait(
        lambda: webhook.alerts("TbmirrorSourceStale", "resolved"), 30,
        "the webhook to hear the alert resolved",
    )  # fmt: skip
    assert resolved["labels"]["source"] == SOURCE

    check_every_dashboard_query_runs(stack)


def check_the_scrape_holds_every_metric_named(exposition: str) -> None:
    """Rules, dashboard and docs name only metrics the daemon exports; the docs name them all,
    with their labels, and every value is sane (no NaN, timestamps in the past, ...)."""
    exposed = exposed_names(exposition) | PROMETHEUS_SERIES
    used = {name for rule in alert_rules() for name in promql_metric_names(rule["expr"])}
    assert used - exposed == set(), "rules use metrics the daemon does not export"
    used = {name for expr in dashboard_queries() for name in promql_metric_names(expr)}
    assert used - exposed == set(), "the dashboard uses metrics the daemon does not export"

    documented = documented_metrics()
    assert len(documented) >= 20, f"the docs' metric table was not found: {documented}"
    assert set(documented) - exposed == set(), "documented metrics missing from /metrics"
    now = time.time()
    for family in text_string_to_metric_families(exposition):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in documented, f"{name} is exported but not documented"
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}  # a histogram's buckets
            assert labels <= documented[name], f"{sample.name}: undocumented labels {labels}"
            assert math.isfinite(sample.value) and sample.value >= 0, sample

    values = {
        (s.name, s.labels.get("source")): s
        for f in text_string_to_metric_families(exposition) for s in f.samples
    }  # fmt: skip
    info = values["tbmirror_build_info", None]
    assert info.value == 1 and info.labels == {"version": tbmirror.__version__}
    started = values["process_start_time_seconds", None].value
    assert now - 600 < started < now
    assert started < values["tbmirror_source_last_success_timestamp_seconds", SOURCE].value < now
    assert values["tbmirror_source_stale_after_seconds", SOURCE].value == STALE_AFTER
    assert values["tbmirror_source_degraded", SOURCE].value in (0, 1)
    assert values["tbmirror_tensorboard_up", None].value == 1
    assert values["tbmirror_points_written_total", SOURCE].value == 20
    assert values["tbmirror_written_bytes_total", SOURCE].value > 20 * 10
    assert values["tbmirror_polls_total", SOURCE].value >= 1
    assert values["tbmirror_runs_mirrored", SOURCE].value == 1
    assert values["tbmirror_source_requests_total", SOURCE].value >= 2


def check_idle_passes_leave_no_info_line(stack: Stack) -> None:
    """At the default level, a pass that changed nothing writes no line; the first wrote one."""

    def polls() -> float:
        (sample,) = [
            s for f in text_string_to_metric_families(stack.scrape()) for s in f.samples
            if s.name == "tbmirror_polls_total"
        ]  # fmt: skip
        return sample.value

    wait_until(lambda: polls() >= 4, 60, "four passes")
    synced = [e for e in stack.daemon.events() if e.get("event") == "source_synced"]
    assert [e for e in synced if idle(e)] == []
    assert sum(e["points"] for e in synced) == 20 and {e["level"] for e in synced} == {"info"}


def idle(event: dict[str, Any]) -> bool:
    """A `source_synced` of a pass that changed nothing."""
    return not (event["points"] or event["bytes"] or event["failed_runs"] or event["retired"])


def check_every_dashboard_query_runs(stack: Stack) -> None:
    """Every panel query, with Grafana's variables substituted, runs on the real Prometheus;
    one whose metrics all have samples also returns data. The template variables' label
    queries find the instance and the source."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    substitutes = {
        "$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m",
        "$instance": stack.target, "$source": SOURCE,
    }  # fmt: skip
    scraped = exposed_names(stack.scrape())
    with_samples = {
        s.name for f in text_string_to_metric_families(stack.scrape()) for s in f.samples
    }
    for expr in dashboard_queries():
        query = expr
        for variable, value in substitutes.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"an unknown variable in {expr}"
        answer = stack.prometheus.query(query)
        assert answer["status"] == "success", f"{expr}: {answer}"
        metrics = promql_metric_names(expr)
        assert metrics <= scraped | PROMETHEUS_SERIES, expr
        if metrics <= with_samples:
            assert answer["data"]["result"], f"no data for {query}"
    for name, wanted in (("instance", stack.target), ("source", SOURCE)):
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["definition"])
        assert match, variables[name]
        selector = match[1].replace("$instance", stack.target)
        values = stack.prometheus.http.get(
            f"/api/v1/label/{match[2]}/values", params={"match[]": selector}
        ).json()["data"]
        assert wanted in values, (name, values)


def test_the_dashboard_is_grafana_json() -> None:
    """The structure Grafana's import reads: unique panel ids on a 24-column grid, every target
    a PromQL query with a refId on the dashboard's data source variable, every variable used
    defined."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "source"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    kinds = {"row", "stat", "timeseries", "state-timeline"}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert panel["type"] in kinds and panel["title"], panel
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, (panel["title"], used)


def test_idle_passes_log_at_debug_and_changes_at_info(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon: Any, experiment_name: str
) -> None:
    """At level debug the idle passes show, as debug lines; each pass that wrote is one info."""
    client = mlflow_server.client()
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    client.log_metric(run_id, "loss", 1.0, step=0)
    config = write_config(
        tmp_path / "tbmirror.yaml", tmp_path / "root",
        [mlflow_source("quiet", mlflow_server.url, [experiment_name], poll_interval="0.5s")],
        tensorboard={"enabled": False}, health={"enabled": False}, logging={"level": "debug"},
    )  # fmt: skip
    daemon: DaemonProcess = start_daemon(config)

    def synced() -> list[dict[str, Any]]:
        return [e for e in daemon.events() if e.get("event") == "source_synced"]

    wait_until(lambda: len(synced()) >= 4, 120, "four passes")
    client.log_metric(run_id, "loss", 0.5, step=1)
    wait_until(lambda: sum(e["points"] for e in synced()) == 2, 120, "the new point synced",
               saw=synced)  # fmt: skip
    events = synced()
    assert {e["level"] for e in events if idle(e)} == {"debug"}, events
    assert {e["level"] for e in events if not idle(e)} == {"info"}, events
    assert sum(e["points"] for e in events) == 2, events
    # the daemon's log is in the watched config directory: no line may beget another
    echoes = [e for e in daemon.events() if str(e.get("logger", "")).startswith("watchdog")]
    assert echoes == [], echoes[:3]
    assert daemon.stop() == 0


def test_a_removed_source_leaves_no_series() -> None:
    """A source a reload removes takes its series with it, write failures by cause included;
    the other sources' stay."""
    metrics = DaemonMetrics(lambda: {}, lambda: None)
    for source in ("gone", "kept"):
        metrics.record(PassReport(source, points=3, bytes_written=90), runs_mirrored=1)
        metrics.write_failed(source, "ENOSPC")
    metrics.forget("gone")
    sources = {
        s.labels.get("source")
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if s.name.startswith("tbmirror_") and s.name != "tbmirror_build_info"
    }
    assert sources == {"kept"}


def test_forget_is_safe_while_writer_threads_report_failures() -> None:
    """`write_failed` runs on writer threads while a reload's `forget` runs: forgetting never
    fails on a set that changes under it, and drops every series of the source it forgets."""
    metrics = DaemonMetrics(lambda: {}, lambda: None)
    for cause in range(5000):
        metrics.write_failed("gone", f"E{cause}")
    done = threading.Event()
    failures: list[BaseException] = []

    def report() -> None:
        count = 0
        while not done.is_set():
            count += 1
            metrics.write_failed("kept", f"E{count}")

    writers = [threading.Thread(target=report) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: mid-iteration, if nothing guards it
    for writer in writers:
        writer.start()
    try:
        for round_ in range(200):
            metrics.write_failed("gone", f"again{round_}")
            try:
                metrics.forget("gone")
            except RuntimeError as error:  # "Set changed size during iteration"
                failures.append(error)
                break
    finally:
        done.set()
        for writer in writers:
            writer.join(10)
        sys.setswitchinterval(interval)
    assert not failures, failures
    exposed = generate_latest(metrics.registry).decode()
    assert 'source="gone"' not in exposed
