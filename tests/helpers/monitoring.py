"""What the monitoring tests share: the shipped files, the Debian tools they run (Prometheus and
Alertmanager as processes), the test's own webhook receiver, and the metric names a PromQL
expression or a /metrics scrape holds."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers.tools import tool
from tbmirror.processes import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TESTS = REPO / "deploy" / "prometheus" / "rules.test.yml"
ALERTMANAGER_EXAMPLE = REPO / "deploy" / "prometheus" / "alertmanager.example.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tbmirror.json"
MONITORING_DOC = REPO / "docs" / "operations" / "monitoring.md"

# Series Prometheus makes itself, not the daemon.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


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
    suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


class Served:
    """A monitoring server of Debian's (Prometheus or Alertmanager) on a 127.0.0.1 port of its
    own, its output in a log file; `stop` ends its process group."""

    def __init__(self, command: list[str], port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{command[0]} did not start: {self.log()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.http.close()
        stop_process_group(self.process, grace=5)


class Prometheus(Served):
    """A real Prometheus: scrapes `targets` as job "tbmirror" every second, evaluates
    `rules` every second and sends alerts to `alertmanager` (host:port)."""

    def __init__(self, directory: Path, targets: list[str], rules: Path, alertmanager: str):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": "tbmirror", "static_configs": [{"targets": targets}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        super().__init__(
            [tool("prometheus", "prometheus"), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            port, directory / "prometheus.log",
        )  # fmt: skip

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query (status "success" or "error", never raised)."""
        answer: dict[str, Any] = self.http.get("/api/v1/query", params={"query": expr}).json()
        return answer

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts called `name`."""
        answer = self.http.get("/api/v1/alerts").json()
        return [a for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name]


class Alertmanager(Served):
    """A real Alertmanager (no cluster gossip) running `config`."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        (directory / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        super().__init__(
            [tool("prometheus-alertmanager", "prometheus-alertmanager"),
             f"--config.file={directory / 'alertmanager.yml'}",
             f"--storage.path={directory / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            self.port, directory / "alertmanager.log",
        )  # fmt: skip


class Webhook:
    """The test's own Alertmanager webhook receiver: keeps every notification's JSON body."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/tbmirror"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, name: str, status: str) -> list[dict[str, Any]]:
        """Alerts called `name` with `status` (firing, resolved) in any notification so far."""
        return [
            alert for note in list(self.notifications) for alert in note["alerts"]
            if alert["labels"]["alertname"] == name and alert["status"] == status
        ]  # fmt: skip

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
