"""Every series pattern, mirrored and read back through TensorBoard's scalars API: count, float32
value, step (per the documented rule in tbmirror.mirror.steps) and wall time match the source."""

from __future__ import annotations

import math
import time

import numpy as np
from mlflow.entities import Metric

from conftest import MlflowServer, TensorBoard, tb_run

T0 = int(time.time() * 1000) - 3_600_000
INF = float("inf")
NAN = float("nan")

# key -> ([(timestamp offset ms, source step, value)], expected TensorBoard steps)
PATTERNS: dict[str, tuple[list[tuple[int, int, float]], list[int]]] = {
    "increasing": ([(0, 0, 1.0), (10, 1, 2.0), (20, 5, 3.0), (30, 100, 4.0)], [0, 1, 5, 100]),
    "stepless": ([(i * 10, 0, float(i)) for i in range(6)], [0, 1, 2, 3, 4, 5]),
    "repeated": (
        [(0, 0, 1.0), (10, 0, 2.0), (20, 1, 3.0), (30, 1, 4.0), (40, 2, 5.0)],
        [0, 1, 2, 3, 4],
    ),
    "late lower step": (
        [(i * 10, i, float(i)) for i in range(10)] + [(200, 5, 55.0)],
        [*range(10), 10],
    ),
    "equal timestamps": ([(0, 0, 1.0), (0, 1, 2.0), (0, 2, 3.0), (0, 2, 4.0)], [0, 1, 2, 3]),
    "special values": (
        [(0, 0, NAN), (10, 1, INF), (20, 2, -INF), (30, 3, 1e-45), (40, 4, 3.4e38)],
        [0, 1, 2, 3, 4],
    ),
    "negative steps": ([(0, -5, 1.0), (10, -2, 2.0), (20, 0, 3.0)], [-5, -2, 0]),
    "ünïcödé 损失 loss": ([(0, 0, 0.5), (10, 1, 0.25)], [0, 1]),
    "spaced key name": ([(0, 1, 1.5), (10, 2, 2.5)], [1, 2]),
    "train/loss": ([(0, 0, 9.0), (10, 1, 8.0)], [0, 1]),
    "a/b/c deep": ([(0, 3, 7.0), (10, 7, 6.0)], [3, 7]),
}


def same_float32(a: float, b: float) -> bool:
    with np.errstate(over="ignore"):
        x, y = np.float32(a), np.float32(b)
    return bool((math.isnan(x) and math.isnan(y)) or x == y)


def test_every_series_pattern_matches_the_source_exactly(
    sync,
    mlflow_server: MlflowServer,
    tensorboard: TensorBoard,
    experiment_name: str,
    source_name: str,
) -> None:
    client = mlflow_server.client()
    experiment_id = client.create_experiment(experiment_name)
    run_id = client.create_run(experiment_id, run_name="patterns").info.run_id
    for key, (points, _) in PATTERNS.items():
        metrics = [Metric(key, value, T0 + offset, step) for offset, step, value in points]
        client.log_batch(run_id, metrics=metrics)

    sync([experiment_name])

    run = tb_run(source_name, experiment_name, "patterns")
    for key, (points, expected_steps) in PATTERNS.items():
        source = client.get_metric_history(run_id, key)  # the server's own order
        assert len(source) == len(points)
        shown = tensorboard.wait_scalars(run, key, len(source))
        assert [step for _, step, _ in shown] == expected_steps, key
        for (wall_time, _, value), metric in zip(shown, source, strict=True):
            assert wall_time == metric.timestamp / 1000, key
            assert same_float32(value, metric.value), (key, value, metric.value)
