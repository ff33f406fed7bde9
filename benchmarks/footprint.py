"""Footprint: the daemon's memory and CPU with many runs tracked and nothing changing.

Builds (once per --workdir) an MLflow experiment of 10,000 finished runs x 20 keys, lets the
daemon (poll interval 10 s) mirror it, then measures:
  - once the daemon's passes have listed the artifacts of every run (a one-time cost it spreads
    over its passes, `artifacts.batch` runs each; --artifact-batch), its RSS (and peak) and CPU
    share over an idle window, from /proc; TensorBoard, its child, apart;
  - the CPU seconds of one full listing with nothing new (in-process, after the daemon stopped),
    amortised over `full_listing_interval`;
against a baseline measured in the same run: a Python process that only imports tbmirror.

Usage: python benchmarks/footprint.py [--runs 10000 --keys 20] [--window 120] [--workdir DIR]
Targets: RSS <= 150 MB, idle CPU < 2 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from common import start_daemon, write_config
from tbmirror.config import load_settings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.journal import Journal
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.processes import free_port, stop_process_group
from tbmirror.sources.mlflow import MlflowSource

EXPERIMENT = "footprint"
TICKS = os.sysconf("SC_CLK_TCK")


def build(client: MlflowClient, runs: int, keys: int) -> None:
    """Finished runs with one point per key; an interrupted build is completed."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    done = {
        r.info.run_name
        for r in client.search_runs(
            [experiment_id], "attributes.status = 'FINISHED'", max_results=50_000
        )
    }
    t0 = int(time.time() * 1000) - 86_400_000

    def one(index: int) -> None:
        run_id = client.create_run(experiment_id, run_name=f"run{index:05d}").info.run_id
        client.log_batch(
            run_id, metrics=[Metric(f"key_{k:02d}", k * 0.5, t0, 0) for k in range(keys)]
        )
        client.set_terminated(run_id)

    missing = [i for i in range(runs) if f"run{i:05d}" not in done]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, missing))
    if missing:
        print(f"built {len(missing)} runs in {time.monotonic() - started:.0f} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def wait_for_full_pass(log_path: Path, runs: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"source_synced"' in line:
                event = json.loads(line)
                if event.get("full") and event.get("runs") >= runs:
                    return float(event["duration_ms"]) / 1000
        time.sleep(1)
    raise SystemExit(f"no full pass over {runs} runs within {timeout:.0f} s; see {log_path}")


def wait_for_quiet_pass(log_path: Path, timeout: float) -> float:
    """Seconds until a quick pass makes no more than its 4 listing requests, i.e. the daemon has
    listed the artifacts of every old run (`artifacts.batch` per pass)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"source_synced"' in line:
                event = json.loads(line)
                if not event.get("full") and event.get("requests", 99) <= 4:
                    return time.monotonic() - started
        time.sleep(1)
    raise SystemExit(f"the artifact backlog was not listed within {timeout:.0f} s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--window", type=float, default=120)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--artifact-batch", type=int, default=1000,
        help="artifacts.batch: old runs whose artifacts each daemon pass lists (default 100)",
    )  # fmt: skip
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-footprint-"))
    for stale in ("logs", "state.db", "state.db-wal", "state.db-shm", "daemon.log"):
        subprocess.run(["rm", "-rf", str(work / stale)], check=True)

    with LocalMlflowServer(work / "mlflow") as server:
        build(MlflowClient(server.url), args.runs, args.keys)
        config = write_config(
            work, server.url, EXPERIMENT,
            source={"poll_interval": 10, "artifacts": {"batch": args.artifact_batch}},
            tensorboard={"port": free_port(), "reload_interval": 5}, health={"port": free_port()},
        )  # fmt: skip
        log_path = work / "daemon.log"
        daemon = start_daemon(config, log_path)
        baseline = subprocess.Popen(
            [sys.executable, "-c", "import tbmirror.cli, time; time.sleep(3600)"]
        )
        try:
            backfill = wait_for_full_pass(log_path, args.runs, timeout=3600)
            tensorboard_pid = next(
                json.loads(line)["pid"]
                for line in log_path.read_text().splitlines()
                if '"tensorboard_ready"' in line
            )
            drain = wait_for_quiet_pass(log_path, timeout=3600)  # the artifact backlog listed
            time.sleep(15)  # let TensorBoard's first load settle
            start = time.monotonic()
            cpu0, tb_cpu0 = cpu_seconds(daemon.pid), cpu_seconds(tensorboard_pid)
            time.sleep(args.window)
            wall = time.monotonic() - start
            idle_cpu = (cpu_seconds(daemon.pid) - cpu0) / wall * 100
            tb_cpu = (cpu_seconds(tensorboard_pid) - tb_cpu0) / wall * 100
            rss, peak = memory_mb(daemon.pid)
            tb_rss, _ = memory_mb(tensorboard_pid)
            base_rss, _ = memory_mb(baseline.pid)
        finally:
            baseline.kill()
            stop_process_group(daemon)

        settings = load_settings(config)
        journal = Journal.open(MirrorLayout(settings.mirror.root), settings.mirror.state)
        journal.own(settings.sources[0].name)
        source = MlflowSource.from_settings(settings.sources[0])
        engine = MlflowEngine(source, journal)
        wall_start = time.monotonic()
        drained = engine.run_pass(full=True)  # the artifact listings the daemon had not done yet
        drain_wall = time.monotonic() - wall_start
        cpu_start, wall_start = time.process_time(), time.monotonic()
        report = engine.run_pass(full=True)
        full_cpu, full_wall = time.process_time() - cpu_start, time.monotonic() - wall_start
        source.close()
        journal.close()
    interval = settings.sources[0].full_listing_interval
    print(f"workload: {args.runs:,} runs x {args.keys} keys, poll interval 10 s")
    print(f"initial backfill pass: {backfill:.1f} s (every run's metrics, the artifacts of "
          f"{args.artifact_batch:,} runs)")  # fmt: skip
    print(f"then the daemon's passes listed the other runs' artifacts within {drain:.0f} s; "
          f"in-process afterwards: {drain_wall:.1f} s, {drained.requests} requests")  # fmt: skip
    print(f"daemon RSS {rss:.0f} MB (peak {peak:.0f} MB) vs import-only Python {base_rss:.0f} MB "
          f"({rss / base_rss:.1f} x); target <= 150 MB")  # fmt: skip
    print(f"idle CPU over {wall:.0f} s (quick polls): daemon {idle_cpu:.2f} %, "
          f"TensorBoard {tb_cpu:.2f} % (RSS {tb_rss:.0f} MB)")  # fmt: skip
    print(f"full listing, nothing new: {full_wall:.1f} s wall, {full_cpu:.1f} s CPU, "
          f"{report.requests} requests, {report.bytes_written} bytes; every {interval:.0f} s "
          f"adds {full_cpu / interval * 100:.2f} % CPU")  # fmt: skip
    print(
        f"idle CPU with full listings amortised: {idle_cpu + full_cpu / interval * 100:.2f} %; "
        "target < 2 %"
    )


if __name__ == "__main__":
    main()
