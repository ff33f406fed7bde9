"""`tbmirror demo`: a newcomer's first minute, on this machine alone.

Starts a throw-away MLflow server (sqlite store under the demo folder), logs the seed's example
(scikit-learn's diabetes data, Ridge regression for alpha 0.1 .. 0.7 as child runs of one parent,
param alpha, metric mse, and the parent logging alpha and mse without steps), starts a training
loop run that logs new points every second, and runs the daemon on it. Ctrl-C stops everything.
Needs the `demo` extra (mlflow, scikit-learn).
"""

from __future__ import annotations

import math
import os
import random
import threading
from pathlib import Path
from typing import Any

import structlog

from tbmirror.config import Settings
from tbmirror.errors import TbmirrorError
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port
from tbmirror.service.daemon import Daemon

log = structlog.get_logger(__name__)

SWEEP_EXPERIMENT = "tensorboard-demo"
TRAINING_EXPERIMENT = "training-loop"


def run_demo(directory: Path, port: int) -> int:
    """Run the demo until Ctrl-C; returns the exit code."""
    try:
        import mlflow  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise TbmirrorError(
            "tbmirror demo needs the demo extra: pip install -e '.[demo]' (mlflow, scikit-learn)"
        ) from None
    directory = directory.resolve()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    with LocalMlflowServer(directory / "mlflow") as server:
        log.info("demo_mlflow_server", url=server.url)
        log_sweep(server.url)
        stop = threading.Event()
        trainer = threading.Thread(target=train, args=(server.url, stop), daemon=True)
        trainer.start()
        settings = Settings.model_validate(
            {
                "mirror": {"root": directory / "logs", "state": directory / "state.db"},
                "sources": [
                    {
                        "name": "demo",
                        "type": "mlflow",
                        "tracking_uri": server.url,
                        "experiments": [SWEEP_EXPERIMENT, TRAINING_EXPERIMENT],
                        "poll_interval": 2,
                    }
                ],
                "tensorboard": {"port": port, "reload_interval": 1},
                "health": {"port": free_port()},
            }
        )

        def ready(daemon: Daemon) -> None:
            assert daemon.tensorboard is not None
            print(f"MLflow:      {server.url}", flush=True)
            print(f"TensorBoard: {daemon.tensorboard.url}   (Ctrl-C to stop)", flush=True)

        try:
            return Daemon(settings, on_ready=ready).run()
        finally:
            stop.set()
            trainer.join(timeout=10)


def log_sweep(tracking_uri: str) -> None:
    """The seed's example, logged once per demo folder."""
    import mlflow
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment(SWEEP_EXPERIMENT)
    if mlflow.search_runs([experiment.experiment_id], max_results=1, output_format="list"):
        return
    features, target = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.2, random_state=0
    )
    with mlflow.start_run(run_name="ridge-sweep"):
        for alpha in [round(0.1 * i, 1) for i in range(1, 8)]:
            model = Ridge(alpha=alpha).fit(x_train, y_train)
            mse = float(mean_squared_error(y_test, model.predict(x_test)))
            with mlflow.start_run(run_name=f"alpha{alpha}", nested=True):
                mlflow.log_param("alpha", alpha)
                mlflow.log_metric("mse", mse)
            mlflow.log_metric("alpha", alpha)
            mlflow.log_metric("mse", mse)


def train(tracking_uri: str, stop: threading.Event) -> None:
    """A training loop that logs loss and accuracy with steps, one step a second, until `stop`."""
    from mlflow.tracking import MlflowClient

    client: Any = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(TRAINING_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(TRAINING_EXPERIMENT)
    )
    run = client.create_run(experiment_id, run_name="live-training")
    run_id = run.info.run_id
    client.log_param(run_id, "learning_rate", 0.01)
    client.log_param(run_id, "optimizer", "adam")
    rng = random.Random(0)
    step = 0
    try:
        while not stop.is_set():
            loss = 2.0 * math.exp(-step / 60) + 0.1 + rng.gauss(0, 0.03)
            client.log_metric(run_id, "train/loss", loss, step=step)
            client.log_metric(run_id, "train/accuracy", 1 - loss / 2.2, step=step)
            step += 1
            stop.wait(1.0)
    except Exception as error:  # the server went away under us: the demo is ending
        log.warning("demo_training_stopped", error=str(error))
        return
    client.set_terminated(run_id, "FINISHED")
