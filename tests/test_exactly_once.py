"""Exactly once under SIGKILL: `tbmirror sync` on a growing workload is killed at random moments
(and right after it starts writing), then allowed to finish; what a fresh TensorBoard reads back
equals the source, with no point missing and none duplicated."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric

from conftest import MlflowServer, TensorBoard, mlflow_source, tbmirror, write_config

KEYS = ["loss", "acc", "lr", "grad/norm"]
INITIAL_RUNS, POINTS_PER_KEY, ITERATIONS = 30, 400, 24
T0 = 1_700_000_000_000


def mirror_size(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str, source_name: str
) -> None:
    rng = random.Random(1234)
    client = mlflow_server.client()
    experiment_id = client.create_experiment(experiment_name)
    logged: dict[str, int] = {}  # run id -> points logged per key so far

    def log_points(run_id: str, count: int) -> None:
        start = logged.get(run_id, 0)
        metrics = [
            Metric(key, rng.uniform(-1e6, 1e6), T0 + 10 * step, step)
            for key in KEYS
            for step in range(start, start + count)
        ]
        for begin in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[begin : begin + 1000])
        logged[run_id] = start + count

    def new_run(index: int) -> None:
        run_id = client.create_run(experiment_id, run_name=f"run{index:03d}").info.run_id
        log_points(run_id, POINTS_PER_KEY)

    for index in range(INITIAL_RUNS):
        new_run(index)
    root = tmp_path / "mirror"
    config = write_config(
        tmp_path / "tbmirror.yaml",
        root,
        [mlflow_source(source_name, mlflow_server.url, [experiment_name])],
    )

    killed = truncated = 0
    lasts = 2.5  # at most how long a sync takes here: lowered whenever one ends before its kill
    for iteration in range(ITERATIONS):
        for run_id in rng.sample(sorted(logged), 10):
            log_points(run_id, 20)
        new_run(INITIAL_RUNS + iteration)
        size = mirror_size(root) if root.exists() else 0
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "tbmirror", "sync", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if iteration % 2:
            time.sleep(rng.uniform(0.05, 0.9) * lasts)
        else:  # kill just after it starts appending, when uncommitted records are likely
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if root.exists() and mirror_size(root) != size:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        else:
            lasts = min(lasts, time.monotonic() - started)
        _, stderr = process.communicate(timeout=60)
        for line in stderr.splitlines():
            if '"recovered"' in line:
                truncated += json.loads(line)["truncated"] + json.loads(line)["orphans_removed"]

    final = tbmirror("sync", "--config", str(config))
    assert final.returncode == 0, final.stdout + final.stderr
    truncated += sum(
        json.loads(line)["truncated"] + json.loads(line)["orphans_removed"]
        for line in final.stderr.splitlines()
        if '"recovered"' in line
    )
    print(f"killed {killed} times; recovery cut back or removed {truncated} files")
    assert killed >= 20
    assert truncated >= 1, "no kill landed between an append and its commit"
    again = tbmirror("sync", "--config", str(config))
    assert ", 0 points, 0 bytes," in again.stdout

    board = TensorBoard(root, tmp_path / "tensorboard.log")
    try:
        for run in client.search_runs([experiment_id], max_results=1000):
            name = f"{source_name}/{experiment_name}/{run.info.run_name}"
            for key in KEYS:
                source = client.get_metric_history(run.info.run_id, key)
                shown = board.wait_scalars(name, key, len(source), timeout=60)
                assert [p[1] for p in shown] == [m.step for m in source]
                assert [p[0] for p in shown] == [m.timestamp / 1000 for m in source]
                assert [p[2] for p in shown] == [float(np.float32(m.value)) for m in source]
    finally:
        board.stop()
