"""Hostile sources and networks (issue 10): a misbehaving proxy (helpers/hostile_proxy.py) in front
of the real `mlflow server`, one test per rule.

1. An answer is data only if it has the expected shape; a run is removed only on proof.
2. Artifact bytes come only from a proper answer; a bad one never removes the committed copy.
3. Everything is bounded: repeated page tokens, huge answers, trickles, SIGTERM mid-request.
4. Honest health: degraded while a source fails, per-run errors counted.
10. Clear operator messages: the URL tried, "retrying", failed passes logged as failures.

And `test_chaos`: the daemon against every fault in turn while runs keep logging
(`TBMIRROR_CHAOS_SECONDS=600` for a longer run by hand).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.entities import Metric
from tensorboard.compat.proto.event_pb2 import Event

from conftest import (
    DaemonProcess,
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    json_log_lines,
    mlflow_source,
    new_run,
    scalars_in,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.hostile_proxy import HostileProxy, hostile_proxy
from tbmirror.mirror import events, summaries
from test_daemon import health
from test_source_failures import snapshot
from test_uploads import write_tfevents

API = r"/api/2\.0/mlflow"
SEARCH = rf"{API}/runs/search"
GET_RUN = rf"{API}/runs/get\?"
HISTORY = rf"{API}/metrics/get-history\?"
ARTIFACT = r"^/get-artifact\?"
BUSY = {"message": "upstream busy"}
UNAVAILABLE: dict[str, Any] = {
    "code": 503,
    "body": {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"},
    "headers": {"Retry-After": "0"},
}
MAX_RSS_MB = 250
T0 = 1_700_000_000_000


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class Measured:
    """A finished (or killed) `tbmirror` process: its output, wall time and peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float
    timed_out: bool

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr)[-4000:]


# Runs the command given and writes its exit code, wall time and peak RSS (wait4) as JSON. A
# small stdlib-only process of its own: a child's ru_maxrss also counts the image it was forked
# from before exec, which for pytest itself (mlflow imported) is ~200 MB.
_MEASURE = """
import json, os, subprocess, sys, time
result, limit, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
started, timed_out = time.monotonic(), False
child = subprocess.Popen(command)
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() - started > limit:
        timed_out = True
        child.kill()
        pid, status, usage = os.wait4(child.pid, 0)
        break
    time.sleep(0.05)
with open(result, "w") as out:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
               "seconds": time.monotonic() - started, "maxrss_kib": usage.ru_maxrss}, out)
"""


def measured_tbmirror(*args: str, timeout: float) -> Measured:
    """Run `tbmirror` to completion (killed after `timeout` s), measuring its peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        out, err, result = (Path(scratch) / name for name in ("out", "err", "result.json"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            subprocess.run(
                [sys.executable, "-S", "-c", _MEASURE, str(result), str(timeout),
                 sys.executable, "-m", "tbmirror", *args],
                stdout=stdout, stderr=stderr, timeout=timeout + 30, check=True,
            )  # fmt: skip
        measured = json.loads(result.read_text())
        return Measured(
            measured["returncode"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            measured["seconds"],
            measured["maxrss_kib"] * 1024 / 1e6,
            measured["timed_out"],
        )


class ProxiedSource:
    """This test's MLflow source, mirrored through the proxy by `tbmirror sync`."""

    def __init__(
        self, directory: Path, root: Path, name: str, experiment: str, proxy: HostileProxy
    ) -> None:
        self.config, self.root, self.name = directory / "tbmirror.yaml", root, name
        self.experiment, self.proxy = experiment, proxy

    def settings(self, **overrides: Any) -> dict[str, Any]:
        settings = {"timeout": "5s", **overrides}
        return mlflow_source(self.name, self.proxy.url, [self.experiment], **settings)

    def write(self, **overrides: Any) -> Path:
        return write_config(self.config, self.root, [self.settings(**overrides)])

    def sync(self, limit: float = 120, **overrides: Any) -> subprocess.CompletedProcess[str]:
        """`tbmirror sync` (killed after `limit` s) with these source settings."""
        return tbmirror("sync", "--config", str(self.write(**overrides)), timeout=limit)

    def measured_sync(self, limit: float, **overrides: Any) -> Measured:
        return measured_tbmirror("sync", "--config", str(self.write(**overrides)), timeout=limit)

    def run_dir(self, *names: str) -> Path:
        return self.root / self.name / self.experiment / Path(*names)

    def tree(self) -> dict[str, tuple[bytes, int]]:
        return snapshot(self.root / self.name)

    def fail_line(self, stdout: str) -> str:
        """The one `FAIL  <source>: ...` line of a sync's output."""
        lines = [line for line in stdout.splitlines() if line.startswith(f"FAIL  {self.name}:")]
        assert len(lines) == 1, f"expected one FAIL line for {self.name}:\n{stdout}"
        return lines[0]


@pytest.fixture
def source(
    tmp_path: Path, mirror_root: Path, proxy: HostileProxy, source_name: str, experiment_name: str
) -> ProxiedSource:
    return ProxiedSource(tmp_path, mirror_root, source_name, experiment_name, proxy)


def log_points(client: Any, run_id: str, count: int, key: str = "m", start: int = 0) -> None:
    """Points `start` .. `start + count - 1` of `key` (step s, value s / 3, one second apart)."""
    metrics = [Metric(key, s / 3, T0 + 1000 * s, s) for s in range(start, start + count)]
    for chunk in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[chunk : chunk + 1000])


def make_runs(client: Any, experiment: str, names: list[str], points: int = 5) -> dict[str, str]:
    """Runs called `names` (in this order of start time), each with `points` points of `m`."""
    ids = {}
    for name in names:
        ids[name] = new_run(client, experiment, name)
        log_points(client, ids[name], points)
    return ids


def events_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and "tfevents" in p.name)


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr)[-4000:]


def metric_value(metrics_text: str, name: str, source: str) -> float:
    """One Prometheus sample of `name` for `source` (0 when absent)."""
    match = re.search(rf'^{name}\{{source="{re.escape(source)}"\}} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


def scalar_events(root: Path) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """Every simple_value scalar of every events file below `root`: run dir -> tag ->
    [(step, wall_time, value)] in file order."""
    found: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for path in sorted(root.rglob("*tfevents*")):
        tags = found.setdefault(str(path.parent.relative_to(root)), {})
        for record in events.iter_records(path.read_bytes()):
            event = Event.FromString(record.payload)
            for value in event.summary.value:
                series = tags.setdefault(value.tag, [])
                if value.WhichOneof("value") == "simple_value":
                    series.append((event.step, event.wall_time, value.simple_value))
    return found


def mlflow_points(client: Any, run_id: str, key: str) -> Counter[tuple[int, bytes]]:
    """A series as the mirror must hold it: (wall time in ms, float32 value) of every point."""
    return Counter(
        (m.timestamp, summaries.float32_bits(m.value))
        for m in client.get_metric_history(run_id, key)
    )


def mirrored_points(run_dir: Path, key: str) -> Counter[tuple[int, bytes]]:
    return Counter((round(wall * 1000), bits) for wall, bits in scalars_in(run_dir, key))


# -- the proxy itself -------------------------------------------------------------------------


def test_the_hostile_proxy_injects_each_fault_and_closes_cleanly(
    mlflow_server: MlflowServer, experiment_name: str
) -> None:
    client = mlflow_server.client()
    ids = make_runs(client, experiment_name, ["a", "b"], points=1)
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    search = {
        "experiment_ids": [experiment_id],
        "max_results": 1,
        "order_by": ["attributes.start_time ASC"],
    }
    with hostile_proxy(mlflow_server.url) as proxy:
        http = httpx.Client(base_url=proxy.url, timeout=10)
        path = "/api/2.0/mlflow/runs/search"
        real = http.post(path, json=search).json()
        assert len(real["runs"]) == 1 and real["next_page_token"]

        proxy.set("wrong_shape", path=SEARCH, times=1, body=["x"])
        assert http.post(path, json=search).json() == ["x"]
        assert http.post(path, json=search).json() == real, "times=1: the second one passes"
        proxy.set("html", times=1)
        assert http.post(path, json=search).headers["content-type"].startswith("text/html")
        proxy.set("redirect", times=1)
        answer = http.post(path, json=search)
        assert answer.status_code == 302 and "sso" in answer.headers["location"]
        proxy.set("status", times=1, code=404, body={"error_code": "RESOURCE_DOES_NOT_EXIST"})
        answer = http.post(path, json=search)
        assert answer.status_code == 404 and answer.json()["error_code"]
        proxy.set("reset", times=1)
        with pytest.raises(httpx.TransportError):
            http.post(path, json=search)
        proxy.set("truncate_page", times=1)
        assert "next_page_token" not in http.post(path, json=search).json()
        proxy.set("drop_runs", times=1, run_ids=[ids["a"]])
        assert http.post(path, json=search).json()["runs"] == []
        proxy.set("small_pages", times=1, size=1)
        capped = http.post(path, json=search | {"max_results": 10}).json()
        assert len(capped["runs"]) == 1 and capped["next_page_token"]
        proxy.set("huge", times=1, mib=3, content_length=False)
        huge = http.post(path, json=search)
        assert 3 * 2**20 - 1000 < len(huge.content) <= 3 * 2**20 and len(huge.json()["runs"]) > 1
        rule = proxy.set("repeat_token", path=SEARCH)
        first = http.post(path, json=search | {"max_results": 10}).json()
        again = http.post(path, json=search | {"page_token": rule.token}).json()
        assert first == again and first["next_page_token"] == rule.token and len(first["runs"]) == 2
        proxy.clear()
        range_get = {"run_id": ids["a"], "path": "nothing"}
        assert http.get("/get-artifact", params=range_get).status_code >= 400  # passed through
        assert [s.fault for s in proxy.requests].count(None) == 3

        proxy.set("trickle", interval=0.2)
        received: list[bytes] = []

        def read() -> None:
            try:
                with httpx.stream("POST", f"{proxy.url}{path}", json=search, timeout=5) as stream:
                    for chunk in stream.iter_raw(1):
                        received.append(chunk)
            except httpx.HTTPError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        wait_until(lambda: len(received) >= 5, 30, "trickled bytes")
        assert proxy.trickling == 1
        proxy.clear()  # ends the trickle in flight
        reader.join(5)
        assert not reader.is_alive() and proxy.trickling == 0

        proxy.set("trickle")  # one left in flight when the proxy closes
        reader = threading.Thread(target=read)
        reader.start()
        wait_until(lambda: proxy.trickling == 1, 30, "a trickle in flight")
    reader.join(5)
    assert not [t for t in threading.enumerate() if t.name.startswith("hostile-proxy")]


def test_a_sync_through_the_pass_through_proxy_equals_a_direct_one(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    ids = make_runs(client, experiment_name, ["parent", "other"], points=50)
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    child = client.create_run(
        experiment_id, run_name="child", tags={"mlflow.parentRunId": ids["parent"]}
    ).info.run_id
    log_points(client, child, 30, key="loss")
    client.log_param(ids["parent"], "alpha", "0.5")
    artifact = tmp_path / "artifact" / "events.out.tfevents.1.job"
    write_tfevents(artifact, [float(i) for i in range(200)])
    client.log_artifact(ids["other"], str(artifact), "tb")
    client.set_terminated(ids["other"])

    trees, summaries_ = {}, {}
    for how, url in (("direct", mlflow_server.url), ("proxied", proxy.url)):
        root = tmp_path / how / "root"
        root.parent.mkdir()
        config = write_config(
            tmp_path / how / "tbmirror.yaml",
            root,
            [mlflow_source(source_name, url, [experiment_name])],
        )
        result = tbmirror("sync", "--config", str(config))
        assert result.returncode == 0, output_of(result)
        summaries_[how] = re.findall(r": (\d+) runs, (\d+) written, (\d+) points, ", result.stdout)
        trees[how] = root / source_name
    assert summaries_["direct"] == summaries_["proxied"] == [("3", "3", summaries_["direct"][0][2])]
    direct, proxied = (scalar_events(trees[how]) for how in ("direct", "proxied"))
    assert direct == proxied and len(direct) == 4  # three runs and the artifact's copy
    assert sorted(direct[f"{experiment_name}/parent/child"]) == ["loss", "mlflow (run info)"]
    copies = {
        how: sorted(p.relative_to(trees[how]) for p in trees[how].rglob("*tfevents.1.job"))
        for how in trees
    }
    assert copies["direct"] == copies["proxied"] and len(copies["direct"]) == 1
    assert (trees["proxied"] / copies["direct"][0]).read_bytes() == artifact.read_bytes()
    seen = proxy.requests
    assert seen and all(s.fault is None and s.status is not None for s in seen)
    assert {s.status for s in seen} <= {200, 206}
    assert proxy.seen(ARTIFACT, None)


# -- rule 3: everything bounded ---------------------------------------------------------------


def test_a_repeated_search_page_token_ends_the_pass_quickly(
    mlflow_server: MlflowServer, proxy: HostileProxy, source: ProxiedSource
) -> None:
    make_runs(mlflow_server.client(), source.experiment, ["r0", "r1"])
    rule = proxy.set("repeat_token", path=SEARCH)
    result = source.measured_sync(limit=40)
    summary = f"{result.seconds:.1f} s, peak RSS {result.peak_mb:.0f} MB"
    assert not result.timed_out, f"sync still running after {summary}: {result.output}"
    assert result.returncode == 1, result.output
    assert rule.token and rule.token in source.fail_line(result.stdout), result.output
    assert result.peak_mb <= MAX_RSS_MB, summary


def test_a_repeated_history_page_token_ends_the_pass_within_memory(
    mlflow_server: MlflowServer, proxy: HostileProxy, source: ProxiedSource
) -> None:
    """A 30,000-point key is two pages of get-history; a server stuck on the first page's token
    answers that page forever. The pass that meets it keeps the real first page and leaves the
    rest (the page asked from the last point taken does not start with it); the next, reading
    the series from its start with the server's tokens, ends at the repeated token."""
    client = mlflow_server.client()
    run_id = make_runs(client, source.experiment, ["big"], points=1)["big"]
    assert source.sync().returncode == 0
    log_points(client, run_id, 30_000, start=1)
    rule = proxy.set("repeat_token", path=HISTORY)
    for returncode in (0, 1):
        # a 25,000-point page is computed whole before its first byte: on a loaded host that can
        # take longer than the 5 s other tests allow for a whole answer (deadlines, not speeds)
        result = source.measured_sync(limit=120, timeout="30s")
        said = rule.token if returncode else "history_changed_while_read"  # (seen by then)
        summary = f"{result.seconds:.1f} s, peak RSS {result.peak_mb:.0f} MB"
        assert not result.timed_out, f"sync still running after {summary}: {result.output}"
        assert result.returncode == returncode and said and said in result.output, result.output
        assert result.peak_mb <= MAX_RSS_MB, summary
    assert rule.hits >= 2


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "undeclared"])
def test_an_answer_over_max_response_bytes_is_refused_within_memory(
    content_length: bool,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source: ProxiedSource,
) -> None:
    """80 MiB of runs (copies of a real one) with or without a Content-Length."""
    client = mlflow_server.client()
    make_runs(client, source.experiment, ["r0", "r1"])
    assert source.sync().returncode == 0
    mirrored = source.tree()
    experiment_id = client.get_experiment_by_name(source.experiment).experiment_id
    real = httpx.post(
        f"{mlflow_server.url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id], "max_results": 1},
    ).json()["runs"][0]
    rule = proxy.set("huge", path=SEARCH, mib=80, item=real, content_length=content_length)
    result = source.measured_sync(limit=120)
    summary = f"{result.seconds:.1f} s, peak RSS {result.peak_mb:.0f} MB"
    assert rule.hits >= 1
    assert not result.timed_out, f"sync still running after {summary}: {result.output}"
    assert result.returncode == 1, result.output
    assert re.search(r"max_response_bytes|64 MiB", source.fail_line(result.stdout)), result.output
    assert result.peak_mb <= MAX_RSS_MB, summary
    assert source.tree() == mirrored


def test_a_trickling_server_is_cut_off_by_the_total_timeout(
    mlflow_server: MlflowServer, proxy: HostileProxy, source: ProxiedSource
) -> None:
    """One byte a second never trips a per-read timeout; a total deadline of 2 s per request,
    tried twice (max_retries 1), ends the pass in about 4 s."""
    make_runs(mlflow_server.client(), source.experiment, ["r0"])
    proxy.set("trickle", path=SEARCH)
    measured = source.measured_sync(limit=40, timeout="2s", max_retries=1)
    assert not measured.timed_out, f"sync still running after 40 s: {measured.output}"
    assert measured.returncode == 1, measured.output
    line = source.fail_line(measured.stdout)
    assert "runs/search" in line and re.search(r"(?i)timed? ?out|deadline", line), line
    assert measured.seconds >= 3.5, f"{measured.seconds:.1f} s: a deadline shorter than 2 s"
    wait_until(lambda: len(proxy.seen(SEARCH, "trickle")) >= 2, 10, "the trickles to end")
    assert len(proxy.seen(SEARCH, "trickle")) == 2, "one request, retried once"


def test_a_server_trickling_its_status_line_and_headers_is_cut_off_too(
    mlflow_server: MlflowServer, proxy: HostileProxy, source: ProxiedSource
) -> None:
    """Issue 28 defect 2: the deadline covers the status line and the headers, not only the
    body. Each byte of the answer, the first included, comes a second apart (a per-read timeout
    of 2 s never trips): the two tries of 2 s each end the pass with a timeout (on main before
    the fix, sync was still waiting after 60 s)."""
    make_runs(mlflow_server.client(), source.experiment, ["r0"])
    proxy.set("trickle", path=SEARCH, head=True)
    measured = source.measured_sync(limit=60, timeout="2s", max_retries=1)
    assert not measured.timed_out, f"sync still running after 60 s: {measured.output}"
    assert measured.returncode == 1, measured.output
    line = source.fail_line(measured.stdout)
    assert "runs/search" in line and "no complete answer within the timeout" in line, line
    wait_until(lambda: len(proxy.seen(SEARCH, "trickle")) >= 2, 10, "the trickles to end")
    assert len(proxy.seen(SEARCH, "trickle")) == 2, "one request, retried once"
    assert all(seen.bytes < 20 for seen in proxy.seen(SEARCH, "trickle")), "headers not done"


def test_stall_timeout_stops_the_retries_of_a_server_that_never_answers(
    mlflow_server: MlflowServer, proxy: HostileProxy, source: ProxiedSource
) -> None:
    """README: "once no request has been answered for `stall_timeout`, retries stop and the pass
    ends". Every search is reset: of the 20 retries allowed (backing off up to 30 s each, minutes
    in all), those after nothing has answered for 3 s are not made."""
    make_runs(mlflow_server.client(), source.experiment, ["r0"])
    rule = proxy.set("reset", path=SEARCH)
    result = source.sync(limit=300, max_retries=20, timeout="2s", stall_timeout="3s")
    assert result.returncode == 1, output_of(result)
    assert "runs/search" in source.fail_line(result.stdout), output_of(result)
    assert 2 <= rule.hits < 21, f"{rule.hits} attempts: retried, then gave up, stalled"


def test_sigterm_ends_a_daemon_stuck_in_a_trickle(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source: ProxiedSource,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    make_runs(mlflow_server.client(), source.experiment, ["r0"])
    proxy.set("trickle", path=SEARCH)
    config, _, _ = daemon_config(
        tmp_path / "daemon.yaml", tmp_path / "root",
        [source.settings(poll_interval="1s", timeout="60s", max_retries=1)],
        tensorboard={"enabled": False},
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    wait_until(lambda: proxy.trickling >= 1, 30, "a pass stuck in a trickle")
    time.sleep(1)
    daemon.signal(signal.SIGTERM)
    try:  # a deadline, not a speed claim: a trickle never ends by itself
        code = daemon.process.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon is still running 60 s after SIGTERM") from None
    assert code == 0


# -- rule 4: honest health --------------------------------------------------------------------


def wait_first_success(health_url: str, name: str, timeout: float = 60) -> None:
    def ok() -> bool:
        code, body = health(health_url)
        return code == 200 and bool(body["sources"].get(name, {}).get("last_success"))

    wait_until(ok, timeout, f"a first successful pass of {name}")


Sample = tuple[float, int, bool | None]  # (wall time asked, /healthz status, source healthy)


def health_of(url: str, source: str) -> tuple[int, bool | None]:
    code, body = health(url)
    return code, body["sources"].get(source, {}).get("healthy")


def pass_times(daemon: DaemonProcess, source: str, event: str, after: float) -> list[float]:
    """Wall times at which passes of `source` ended after `after`: good ones (not a run failed)
    with event "source_synced", failed ones with "source_backoff" (from the daemon's log)."""
    times = [
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in daemon.events()
        if e.get("event") == event and e.get("source") == source and not e.get("failed_runs")
    ]
    return [moment for moment in times if moment > after]


def by_pass(
    samples: list[Sample], passes: list[float], nth: int, before: float
) -> tuple[int, bool | None] | None:
    """Health told by the nth pass (not by a number of seconds): /healthz's first answer asked
    after the nth of `passes` ended and before `before`, as (status, the source's `healthy`);
    None if there was no such pass or no answer asked in between."""
    if len(passes) < nth:
        return None
    since = passes[nth - 1]
    after = [(code, healthy) for asked, code, healthy in samples if since <= asked < before]
    return after[0] if after else None


@pytest.mark.parametrize(
    ("fault", "params"), [("status", UNAVAILABLE), ("reset", {})], ids=["503-storm", "reset"]
)
def test_health_degrades_by_the_second_failed_pass_and_recovers_by_the_second_good_one(
    fault: str,
    params: dict[str, Any],
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source: ProxiedSource,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """The outage lasts until /healthz has been asked after the second failed pass (at most
    120 s), so health is judged by passes, never by a fixed number of seconds."""
    outage = 120.0
    make_runs(mlflow_server.client(), source.experiment, ["r0", "r1"])
    config, _, health_url = daemon_config(
        tmp_path / "daemon.yaml", tmp_path / "root",
        [source.settings(poll_interval="1s", timeout="2s", max_retries=1)],
        tensorboard={"enabled": False}, health={"stale_after": "5s"},
        logging={"level": "debug"},  # (a pass that changed nothing logs source_synced at debug)
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    wait_first_success(health_url, source.name)

    rule = proxy.set(fault, **params)
    started = time.time()
    samples = []  # (asked at, status code, the source's `healthy`)
    failed: list[float] = []
    while len(failed) < 2 or samples[-1][0] < failed[1] + 0.5:
        assert time.time() - started < outage, f"{len(failed)} failed passes in {outage:.0f} s"
        samples.append((time.time(), *health_of(health_url, source.name)))
        time.sleep(0.1)
        if len(samples) % 5 == 0:  # (the daemon's log, read twice a second)
            failed = pass_times(daemon, source.name, "source_backoff", started)
    assert rule.hits >= 2
    proxy.clear()
    ended = time.time()
    wait_until(lambda: len(pass_times(daemon, source.name, "source_synced", ended)) >= 2, 120,
               "two successful passes after the outage")  # fmt: skip
    samples.append((time.time(), *health_of(health_url, source.name)))
    assert by_pass(samples, failed, 2, ended) == (503, False), (failed, samples)
    succeeded = pass_times(daemon, source.name, "source_synced", ended)
    assert by_pass(samples, succeeded, 2, float("inf")) == (200, True), (succeeded, samples)
    assert daemon.stop() == 0


def test_a_fault_of_one_run_counts_as_a_run_error_and_the_source_stays_healthy(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source: ProxiedSource,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    client = mlflow_server.client()
    ids = make_runs(client, source.experiment, ["bad", "good"])
    root = tmp_path / "root"
    config, _, health_url = daemon_config(
        tmp_path / "daemon.yaml", root,
        [source.settings(poll_interval="1s", timeout="2s", max_retries=1)],
        tensorboard={"enabled": False}, health={"stale_after": "5s"},
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    run_dir = root / source.name / source.experiment

    def points(name: str) -> int:
        return len(scalars_in(run_dir / name, "m"))

    wait_until(lambda: points("bad") == points("good") == 5, 30, "both runs mirrored")

    rule = proxy.set("wrong_shape", path=f"{HISTORY}.*run_id={ids['bad']}", body=BUSY)
    for run_id in ids.values():
        log_points(client, run_id, 5, start=5)
    wait_until(lambda: points("good") == 10, 30, "the good run's new points")

    def counted() -> dict[str, Any] | None:
        code, body = health(health_url)
        entry = body["sources"][source.name]
        return body if code == 200 and entry.get("failed_runs", 0) >= 1 else None

    body = wait_until(counted, 30, "/healthz to count the failed run while staying 200")
    assert rule.hits >= 1
    assert body["sources"][source.name]["healthy"] is True, body
    metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
    assert metric_value(metrics, "tbmirror_run_errors_total", source.name) >= 1, metrics
    assert points("bad") == 5, "nothing may be written from a wrong-shape history"

    proxy.clear()
    wait_until(lambda: points("bad") == 10, 30, "the bad run's points once the fault clears")
    assert mirrored_points(run_dir / "bad", "m") == mlflow_points(client, ids["bad"], "m")
    assert daemon.stop() == 0


# -- rule 10: clear operator messages ---------------------------------------------------------


def test_sync_names_the_url_and_says_it_is_retrying_and_check_does_not_retry(
    proxy: HostileProxy, source: ProxiedSource
) -> None:
    proxy.set("reset")
    config = str(source.write(timeout="2s", max_retries=2))
    result = tbmirror("sync", "--config", config, timeout=60)
    assert result.returncode == 1, output_of(result)
    assert proxy.url in result.stderr, f"sync must name the URL it tries: {result.stderr}"
    assert "retrying" in result.stderr.lower(), "sync must say it retries"
    result = tbmirror("check", "--config", config, timeout=60)
    assert result.returncode == 1, output_of(result)
    assert f"FAIL  {source.name}: {proxy.url}: " in result.stdout, output_of(result)
    assert "retrying" not in result.stderr.lower(), "check tells at once: no retries"


def test_a_failed_pass_is_logged_as_source_failed(
    proxy: HostileProxy, source: ProxiedSource
) -> None:
    proxy.set("status", **UNAVAILABLE)
    result = source.sync()
    assert result.returncode == 1, output_of(result)
    logged = [e for e in json_log_lines(result.stderr) if e.get("source") == source.name]
    failed = [e for e in logged if e.get("event") == "source_failed"]
    assert failed and all(e["level"] == "error" for e in failed), result.stderr
    synced = [e for e in logged if e.get("event") == "source_synced"]
    assert not synced, f"a failed pass logged as source_synced: {synced}"


def test_a_failed_source_is_named_once_in_its_line(
    proxy: HostileProxy, source: ProxiedSource
) -> None:
    """Rule 10's "one line per problem, no repeated source name"."""
    proxy.set("status", **UNAVAILABLE)
    result = source.sync()
    line = source.fail_line(result.stdout)
    assert f"source {source.name}" not in line.removeprefix(f"FAIL  {source.name}:"), line


# -- chaos ------------------------------------------------------------------------------------

CHAOS_SECONDS = float(os.environ.get("TBMIRROR_CHAOS_SECONDS", "0"))  # 0: every fault once
STALE_SECONDS = 2.0
SOURCE_FAULT_SECONDS, RUN_FAULT_SECONDS = 3.5, 3.5
SOURCE_GAP_SECONDS, RUN_GAP_SECONDS = 4.0, 2.5
KEYS = ("loss", "acc")


@dataclass
class Window:
    """One fault (a few rules) switched on for `seconds`. `level`: "source" (every pass fails:
    health must degrade), "run" (some runs fail: counted as run errors), "listing" (the listing
    lies: nothing may be removed)."""

    name: str
    level: str
    rules: list[tuple[str, dict[str, Any]]]
    start: float = 0.0
    end: float = 0.0
    next_start: float = 0.0
    hits: int = 0
    run_errors: float = 0.0
    degraded_after: float | None = None
    healthy_after: float | None = None
    by_second: tuple[int, bool | None] | None = None  # /healthz by the second (`by_pass`)

    @property
    def seconds(self) -> float:
        return SOURCE_FAULT_SECONDS if self.level == "source" else RUN_FAULT_SECONDS

    @property
    def gap(self) -> float:
        return SOURCE_GAP_SECONDS if self.level == "source" else RUN_GAP_SECONDS


def chaos_windows(ids: dict[str, str]) -> list[Window]:
    """Every fault of the proxy, alternating source-level faults with per-run ones."""
    html_404 = "<html><body>404 Not Found</body></html>"
    listing_lies = [
        ("truncate_page", {"path": SEARCH, "keep": 1}),  # only r0, the first started
        ("status", {"path": f"{GET_RUN}.*{ids['r1']}", "code": 404}),
        ("status", {"path": f"{GET_RUN}.*{ids['r2']}", "code": 404, "body": html_404}),
    ]
    history_of_r2 = f"{HISTORY}.*run_id={ids['r2']}"
    return [
        Window("gateway JSON on runs/search", "source", [("wrong_shape", {"path": SEARCH})]),
        Window("HTML 200 on get-artifact", "run", [("html", {"path": ARTIFACT})]),
        Window("302 to SSO on everything", "source", [("redirect", {})]),
        Window("truncated listing; runs/get bare and HTML 404", "listing", listing_lies),
        Window("repeated runs/search page token", "source", [("repeat_token", {"path": SEARCH})]),
        Window(
            "gateway JSON on get-history of r2", "run", [("wrong_shape", {"path": history_of_r2})]
        ),
        Window("trickle on runs/search", "source", [("trickle", {"path": SEARCH})]),
        Window("connection resets", "source", [("reset", {})]),
        Window("503 storm", "source", [("status", UNAVAILABLE)]),
        Window("80 MiB runs/search", "source", [("huge", {"path": SEARCH, "mib": 80})]),
    ]


class Workload(threading.Thread):
    """Logs `loss` and `acc` to every run and appends a scalar record to one run's tfevents
    artifact (in the artifact store, as a job on a shared mount would) every `tick` s."""

    def __init__(self, client: Any, ids: dict[str, str], artifact: Path, tick: float = 0.5):
        super().__init__(name="chaos-workload", daemon=True)
        self.client, self.ids, self.artifact, self.tick = client, ids, artifact, tick
        self.stop = threading.Event()
        self.step = 100  # steps below are the initial points
        self.logged: Counter[str] = Counter()
        self.records = 0
        self.error: BaseException | None = None
        self._encoder = summaries.ScalarEncoder("x")

    def run(self) -> None:
        try:
            while not self.stop.wait(self.tick):
                now = int(time.time() * 1000)
                for index, run_id in enumerate(self.ids.values()):
                    metrics = [Metric(key, self.step / (k + 2) + index, now, self.step)
                               for k, key in enumerate(KEYS)]  # fmt: skip
                    self.client.log_batch(run_id, metrics=metrics)
                    self.logged["points"] += len(metrics)
                record = events.frame(self._encoder.encode(now / 1000, self.step, self.step / 9))
                with self.artifact.open("ab") as file:
                    file.write(record)
                self.records += 1
                self.step += 1
        except BaseException as error:
            self.error = error


class HealthWatch(threading.Thread):
    """Polls /healthz every 0.1 s: (wall time asked, status code, the source's `healthy`), and
    counts every failure to get an answer at all."""

    def __init__(self, url: str, source: str) -> None:
        super().__init__(name="chaos-health", daemon=True)
        self.url, self.source = url, source
        self.stop = threading.Event()
        self.samples: list[tuple[float, int, bool | None]] = []
        self.unanswered = 0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            asked = time.time()
            try:
                code, healthy = health_of(self.url, self.source)
            except (httpx.HTTPError, ValueError):
                self.unanswered += 1
                continue
            self.samples.append((asked, code, healthy))

    def first(self, after: float, before: float, degraded: bool) -> float | None:
        """When /healthz first said degraded (503, the source unhealthy), or healthy (200),
        between `after` and `before`."""
        for moment, code, healthy in self.samples:
            if not after <= moment <= before:
                continue
            if (degraded and code == 503 and healthy is False) or (not degraded and code == 200):
                return moment
        return None

    def transitions(self, origin: float) -> list[str]:
        found, last = [], None
        for moment, code, healthy in self.samples:
            if (code, healthy) != last:
                found.append(f"{moment - origin:6.1f} s  {code}  healthy={healthy}")
                last = (code, healthy)
        return found


def test_chaos(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    source: ProxiedSource,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    client = mlflow_server.client()
    ids = make_runs(client, source.experiment, ["r0", "r1", "r2"], points=0)
    for run_id in ids.values():
        client.log_batch(run_id, metrics=[
            Metric(key, s / (k + 2), T0 + 1000 * s, s) for k, key in enumerate(KEYS)
            for s in range(10)
        ])  # fmt: skip
    local = tmp_path / "job" / "events.out.tfevents.1.chaos"
    write_tfevents(local, [float(i) for i in range(50)])
    client.log_artifact(ids["r0"], str(local), "tb")
    stored = Path(client.get_run(ids["r0"]).info.artifact_uri.removeprefix("file://"))
    stored = stored / "tb" / local.name
    assert stored.read_bytes() == local.read_bytes()

    root = tmp_path / "root"
    config, tb_url, health_url = daemon_config(
        tmp_path / "daemon.yaml", root,
        [source.settings(poll_interval="1s", full_listing_interval="3s", reconcile_interval="5s",
                         timeout="2s", max_retries=1)],
        health={"stale_after": f"{STALE_SECONDS:g}s"},
        logging={"level": "debug"},  # (a pass that changed nothing logs source_synced at debug)
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    run_dirs = {name: root / source.name / source.experiment / name for name in ids}
    copy_dir = run_dirs["r0"] / "tb"

    def mirrored(expected_records: int) -> bool:
        counts = [len(scalars_in(d, key)) for d in run_dirs.values() for key in KEYS]
        records = len(scalars_in(copy_dir, "x"))
        return all(count == counts[0] for count in counts) and records == expected_records

    wait_until(lambda: mirrored(50) and len(scalars_in(run_dirs["r2"], "acc")) == 10,
               60, "the first mirror")  # fmt: skip
    wait_first_success(health_url, source.name)
    files_before = {name: events_files(d) for name, d in run_dirs.items()}
    copies_before = events_files(copy_dir)

    workload = Workload(client, ids, stored)
    watch = HealthWatch(health_url, source.name)
    workload.start()
    watch.start()
    origin = time.time()
    done: list[Window] = []
    try:
        while not done or time.time() - origin < CHAOS_SECONDS:
            for window in chaos_windows(ids):
                metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
                errors_before = metric_value(metrics, "tbmirror_run_errors_total", source.name)
                if done:
                    done[-1].next_start = time.time()
                window.start = time.time()
                rules = [proxy.set(fault, **params) for fault, params in window.rules]
                time.sleep(window.seconds)  # and on until it has hit (a loaded host is slow)
                wait_until(lambda: rules[0].hits, 120, f"{window.name} to hit a request")  # noqa: B023
                proxy.clear()
                window.end = time.time()
                window.hits = rules[0].hits
                time.sleep(window.gap)
                metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
                window.run_errors = (
                    metric_value(metrics, "tbmirror_run_errors_total", source.name) - errors_before
                )
                done.append(window)
                assert daemon.process.poll() is None, "the daemon died"
                assert workload.error is None, workload.error
        done[-1].next_start = time.time()
    finally:
        proxy.clear()
        workload.stop.set()
        workload.join(30)
    chaos_seconds = time.time() - origin
    passes = [e["duration_ms"] / 1000 for e in daemon.events() if e.get("event") == "source_synced"]
    one_pass = max(passes, default=1.0)
    for window in done:
        if window.level == "source":
            degraded = watch.first(window.start, window.end + 1.0, degraded=True)
            healthy = watch.first(window.end, window.next_start, degraded=False)
            window.degraded_after = None if degraded is None else degraded - window.start
            window.healthy_after = None if healthy is None else healthy - window.end
            good = pass_times(daemon, source.name, "source_synced", window.end)
            window.by_second = by_pass(watch.samples, good, 2, window.next_start)
    injected = Counter(s.fault for s in proxy.requests if s.fault)
    print(f"\nchaos: {chaos_seconds:.0f} s, {len(done)} fault windows, longest pass "
          f"{one_pass:.1f} s; requests answered with a fault: {dict(injected)}")  # fmt: skip
    for window in done:
        went, came = (f"{t:.1f} s" if t is not None else "-"
                      for t in (window.degraded_after, window.healthy_after))  # fmt: skip
        print(f"  {window.start - origin:6.1f} s  {window.level:7}  {window.name}: "
              f"{window.hits} hits, run errors +{window.run_errors:g}, degraded after "
              f"{went}, healthy again after {came}")  # fmt: skip
    print("health transitions:\n  " + "\n  ".join(watch.transitions(origin)))
    wait_until(lambda: health(health_url)[0] == 200, 30, "/healthz healthy at the end")
    watch.stop.set()
    watch.join(5)

    # Afterwards: every point exactly once, in the files and in TensorBoard.
    def differences() -> list[str]:
        found = [
            f"{name}/{key}: {sum(mirrored.values())} points mirrored, {sum(wanted.values())} "
            f"in MLflow, {sum((mirrored - wanted).values())} extra"
            for name, run_id in ids.items()
            for key in KEYS
            if (mirrored := mirrored_points(run_dirs[name], key))
            != (wanted := mlflow_points(client, run_id, key))
        ]
        copies = events_files(copy_dir)
        if copies != copies_before:
            found.append(f"artifact copies {[p.name for p in copies]}, were {copies_before}")
        elif copies[0].read_bytes() != stored.read_bytes():
            found.append(f"artifact copy {copies[0].stat().st_size} bytes, "
                         f"artifact {stored.stat().st_size}")  # fmt: skip
        return found

    try:
        wait_until(lambda: not differences(), 60, "an exact mirror once the faults are cleared")
    except AssertionError as error:
        raise AssertionError(f"{error}: {differences()}") from None
    board = TensorBoardReader(tb_url)
    shown = 0
    for name, run_id in ids.items():
        for key in KEYS:
            history = client.get_metric_history(run_id, key)
            points = board.wait_scalars(tb_run(source.name, source.experiment, name), key,
                                        len(history), timeout=60)  # fmt: skip
            assert sorted(int(p[1]) for p in points) == sorted(m.step for m in history)
            shown += len(points)
    records = 50 + workload.records
    tb_points = board.wait_scalars(tb_run(source.name, source.experiment, "r0", "tb"), "x", records)
    assert [int(p[1]) for p in tb_points] == list(range(50)) + list(range(100, workload.step))

    logged_points = 3 * len(KEYS) * 10 + workload.logged["points"]
    print(f"points logged {logged_points}, mirrored and shown by TensorBoard {shown}; tfevents "
          f"records appended {workload.records}, mirrored {len(tb_points) - 50}")  # fmt: skip

    removed = [e for e in daemon.events() if e.get("event") == "run_removed"]
    restarted = [e for e in daemon.events() if e.get("event") == "tailed_file_restarted"]
    assert not removed, f"runs removed that exist in MLflow: {removed}"
    assert not restarted, f"the artifact was mirrored again: {restarted}"
    assert {name: events_files(d) for name, d in run_dirs.items()} == files_before
    assert sorted(p.name for p in run_dirs["r0"].parent.iterdir()) == sorted(ids)
    assert daemon.process.poll() is None and watch.unanswered == 0, "the daemon stopped answering"
    assert len(daemon.tensorboard_pids()) == 1, "TensorBoard was restarted"
    for window in done:
        assert window.hits >= 1, f"{window.name}: the fault never hit a request"
        if window.level == "run":
            assert window.run_errors >= 1, f"{window.name}: no run error counted"
        if window.level != "source":
            continue
        assert window.degraded_after is not None, f"{window.name}: /healthz never degraded"
        if window.by_second is not None:  # (else the next window began first: no claim)
            assert window.by_second[0] == 200, f"{window.name}: not healthy by the second pass"
    assert daemon.stop() == 0
