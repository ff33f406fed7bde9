"""Freshness: how long after a point is logged to MLflow it is visible in TensorBoard.

Runs the daemon (poll interval 2 s, TensorBoard reload 1 s) on a local MLflow server, logs points
at a steady rate and polls TensorBoard's HTTP API for each. Baseline, measured in the same run: the
same points written straight into an events file (tensorboardX) that the same TensorBoard reads,
i.e. TensorBoard's own reload delay, which no mirror can beat.

Usage: python benchmarks/freshness.py [--points 60] [--rate 2]
Target: p95 <= poll interval + 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient
from tensorboardX import SummaryWriter

from common import Results, start_daemon, write_config
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

POLL_SECONDS = 2.0


def watch(url: str, run: str, tag: str, count: int, seen: dict[int, float]) -> None:
    """Record when each step of run/tag first shows in TensorBoard."""
    client = httpx.Client(base_url=url, timeout=10)
    deadline = time.monotonic() + 120
    while len(seen) < count and time.monotonic() < deadline:
        response = client.get("/data/plugin/scalars/scalars", params={"run": run, "tag": tag})
        now = time.time()
        if response.status_code == 200:
            for _, step, _ in response.json():
                seen.setdefault(int(step), now)
        time.sleep(0.05)


def percentiles(delays: list[float]) -> tuple[float, float]:
    ordered = sorted(delays)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="points per second")
    args = parser.parse_args()
    with Results("freshness") as results:
        measure(args, results)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    work = Path(tempfile.mkdtemp(prefix="tbmirror-freshness-"))
    with LocalMlflowServer(work / "mlflow") as server:
        client = MlflowClient(server.url)
        run_id = client.create_run(client.create_experiment("fresh"), run_name="r").info.run_id
        tensorboard_port = free_port()
        config = write_config(
            work, server.url, "fresh", source={"poll_interval": POLL_SECONDS},
            tensorboard={"port": tensorboard_port, "reload_interval": 1}, health={"enabled": False},
        )  # fmt: skip
        daemon = start_daemon(config, work / "daemon.log")
        url = f"http://127.0.0.1:{tensorboard_port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/data/environment").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            direct = SummaryWriter(str(work / "logs" / "direct"), flush_secs=1)
            mirrored_seen: dict[int, float] = {}
            direct_seen: dict[int, float] = {}
            watchers = [
                threading.Thread(target=watch, args=(url, "bench/fresh/r", "loss", args.points,
                                                     mirrored_seen)),
                threading.Thread(target=watch, args=(url, "direct", "loss", args.points,
                                                     direct_seen)),
            ]  # fmt: skip
            for watcher in watchers:
                watcher.start()
            logged: dict[int, float] = {}
            for step in range(args.points):
                now = time.time()
                client.log_metric(
                    run_id, "loss", 1.0 / (step + 1), timestamp=int(now * 1000), step=step
                )
                direct.add_scalar("loss", 1.0 / (step + 1), step, walltime=now)
                direct.flush()
                logged[step] = now
                time.sleep(max(0.0, 1 / args.rate - (time.time() - now)))
            for watcher in watchers:
                watcher.join()
            direct.close()
        finally:
            stop_process_group(daemon)
    mirrored = [mirrored_seen[s] - logged[s] for s in logged if s in mirrored_seen]
    baseline = [direct_seen[s] - logged[s] for s in logged if s in direct_seen]
    m50, m95 = percentiles(mirrored)
    b50, b95 = percentiles(baseline)
    print(f"points: {args.points} at {args.rate}/s; poll interval {POLL_SECONDS} s, reload 1 s")
    print(f"seen through tbmirror: {len(mirrored)}/{args.points}, p50 {m50:.2f} s, p95 {m95:.2f} s")
    print(f"written directly:      {len(baseline)}/{args.points}, p50 {b50:.2f} s, p95 {b95:.2f} s")
    print(f"p95 ratio tbmirror/direct: {m95 / b95:.1f} x; target p95 <= {POLL_SECONDS + 2:.1f} s: "
          f"{'met' if m95 <= POLL_SECONDS + 2 else 'NOT met'}")  # fmt: skip

    results.workload = (
        f"{args.points} points at {args.rate}/s; poll interval {POLL_SECONDS} s, "
        "TensorBoard reload 1 s"
    )
    results.add("points seen through tbmirror", len(mirrored), f"of {args.points}")
    results.add("delay through tbmirror, p50", m50, "s")
    results.add("delay through tbmirror, p95", m95, "s", f"<= {POLL_SECONDS + 2:.0f} s",
                m95 <= POLL_SECONDS + 2)  # fmt: skip
    results.add("delay written directly (baseline), p50", b50, "s")
    results.add("delay written directly (baseline), p95", b95, "s")
    results.add("p95 ratio tbmirror / direct", m95 / b95, "x")


if __name__ == "__main__":
    main()
