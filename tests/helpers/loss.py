"""A "loss" series logged to one MLflow run, as the daemon tests that sync one run log it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric


def loss_logger(client: Any, run_id: str) -> Callable[[range], None]:
    """log(steps): points (1 / (step + 1) at step s, a millisecond apart) of "loss" to `run_id`."""

    def log(steps: range) -> None:
        metrics = [Metric("loss", 1.0 / (s + 1), 1_700_000_000_000 + s, s) for s in steps]
        client.log_batch(run_id, metrics=metrics)

    return log
