"""Exactly once under SIGKILL: `tbmirror sync` on a growing workload is killed again and again at
exact steps of the journal's protocol (after an append, after its fsync, after its commit: the
test hook of helpers/kills.py), then allowed to finish; every kill before a commit is cut back by
the next start, and what a fresh TensorBoard reads back equals the source, with no point missing
and none duplicated."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from mlflow.entities import Metric

from conftest import MlflowServer, TensorBoard, mlflow_source, tbmirror, write_config
from helpers.kills import BATCH_STEPS, files_cut, kill_at_step, recovered_events

KEYS = ["loss", "acc", "lr", "grad/norm"]
INITIAL_RUNS, POINTS_PER_KEY, ITERATIONS = 15, 400, 6  # each step of BATCH_STEPS twice
T0 = 1_700_000_000_000


def test_sigkill_at_each_protocol_step_loses_and_duplicates_nothing(
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
    command = [sys.executable, "-m", "tbmirror", "sync", "--config", str(config)]

    kills: list[str] = []
    for iteration in range(ITERATIONS):  # each sync has at least 9 runs to write
        for run_id in rng.sample(sorted(logged), 8):
            log_points(run_id, 20)
        new_run(INITIAL_RUNS + iteration)
        step = BATCH_STEPS[iteration % len(BATCH_STEPS)]  # in its first batch that appends
        kill_at_step(command, step, tmp_path / f"sync-{iteration:02d}.log")
        kills.append(step)

    final = tbmirror("sync", "--config", str(config))
    assert final.returncode == 0, final.stdout + final.stderr
    # What each start found of the kill before it: cut back after an append or its fsync,
    # nothing past the committed length after a commit.
    recoveries = [
        recovered_events((tmp_path / f"sync-{index:02d}.log").read_text())
        for index in range(1, ITERATIONS)
    ] + [recovered_events(final.stderr)]
    found = [
        (step, [files_cut(e) for e in events])
        for step, events in zip(kills, recoveries, strict=True)
    ]
    for step, cut in found:
        assert len(cut) == 1, found
        assert (cut[0] >= 1) == (not step.startswith("batch_committed")), found
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
