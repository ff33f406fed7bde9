"""`tbmirror demo`: a newcomer's first minute, on this machine alone.

Starts a throw-away MLflow server (sqlite store under the demo folder), logs the seed's example
(scikit-learn's diabetes data, Ridge regression for alpha 0.1 .. 0.7 as child runs of one parent,
param alpha, metric mse, and the parent logging alpha and mse without steps, a results table and a
plot of mse against alpha), starts a training loop run that logs new points every second and a
prediction plot every PLOT_EVERY steps, and runs the daemon on it. The folder is kept and reused
by the next demo. Ctrl-C stops everything. Needs the `demo` extra (mlflow, scikit-learn).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import structlog

from tbmirror.config import settings_from
from tbmirror.errors import TbmirrorError
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.service.daemon import Daemon

log = structlog.get_logger(__name__)

SWEEP_EXPERIMENT = "tensorboard-demo"
TRAINING_EXPERIMENT = "training-loop"
PLOT_EVERY = 5  # steps of the live run between two prediction plots
TRAINER_JOIN_SECONDS = 2.0  # a request of the training loop under way when Ctrl-C came
PARENT_TAG = "mlflow.parentRunId"


def run_demo(directory: Path, port: int, health_port: int) -> int:
    """Run the demo until Ctrl-C; returns the exit code (130: stopped before it was up)."""
    try:
        import mlflow  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise TbmirrorError(
            "tbmirror demo needs the demo extra: pip install -e '.[demo]' (mlflow, scikit-learn)"
        ) from None
    directory = directory.resolve()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the banner stays in view
    print(f"Starting MLflow and TensorBoard in {directory} ...", flush=True)
    # Ctrl-C only sets `stop`, which each step of the start-up checks: a KeyboardInterrupt raised
    # wherever the signal lands can be lost (raised inside a __del__ or a library's callback,
    # Python prints "Exception ignored" and goes on), and the demo would run on.
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = LocalMlflowServer(directory / "mlflow")
    try:
        server.start(stop=stop)
        return _mirror(server, directory, port, health_port, stop)
    except KeyboardInterrupt:  # raised by a step that saw `stop`
        _say_stopping()
        return 130
    finally:
        server.stop()
        signal.signal(signal.SIGINT, previous)


def _mirror(
    server: LocalMlflowServer, directory: Path, port: int, health_port: int, stop: threading.Event
) -> int:
    """Log the sweep, start the training loop and run the daemon on the server until `stop`."""
    log_sweep(server.url, stop)
    trainer = threading.Thread(target=train, args=(server.url, stop), daemon=True)
    trainer.start()
    settings = settings_from(
        {
            "mirror": {"root": str(directory / "logs"), "state": str(directory / "state.db")},
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
            "health": {"port": health_port},
        },
        origin="the demo's settings",
    )
    announced = threading.Event()

    def ready(daemon: Daemon) -> None:
        assert daemon.tensorboard is not None
        if not stop.is_set():  # Ctrl-C while the daemon started: it stops at once
            print(banner(server.url, daemon.tensorboard.url, health_port, directory), flush=True)
            announced.set()

    try:
        code = Daemon(
            settings, on_ready=ready, on_stopping=_say_stopping, stop_event=stop
        ).run()  # its SIGINT handler sets `stop` too: the training loop ends with the daemon
        return code if announced.is_set() else 130
    finally:
        stop.set()
        trainer.join(timeout=TRAINER_JOIN_SECONDS)  # it marks its run FINISHED, or gives up


def _say_stopping() -> None:
    print("stopping...", flush=True)


def banner(mlflow_url: str, tensorboard_url: str, health_port: int, directory: Path) -> str:
    """What the demo prints once it is up (per-pass logs are at debug: it stays in view)."""
    return "\n".join(
        [
            f"MLflow:      {mlflow_url}",
            f"TensorBoard: {tensorboard_url}",
            f"Health:      http://127.0.0.1:{health_port}/healthz",
            f"Data:        {directory} (kept, and reused by the next demo; "
            "delete it to start over)",
            "Ctrl-C stops the demo.",
        ]
    )


def log_sweep(tracking_uri: str, stop: threading.Event | None = None) -> None:
    """The seed's example, logged once per demo folder; `stop` set (Ctrl-C) ends it between two
    runs with KeyboardInterrupt, and the next demo replaces the part logged by a whole sweep."""
    import mlflow
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    def check_stop() -> None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment(SWEEP_EXPERIMENT)
    logged = mlflow.search_runs([experiment.experiment_id], output_format="list")
    if any(run.info.status == "FINISHED" and not run.data.tags.get(PARENT_TAG) for run in logged):
        return
    for run in logged:  # a sweep cut short by Ctrl-C
        mlflow.delete_run(run.info.run_id)
    check_stop()
    features, target = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.2, random_state=0
    )
    results: dict[str, list[float]] = {"alpha": [], "mse": []}
    with mlflow.start_run(run_name="ridge-sweep"):
        for alpha in [round(0.1 * i, 1) for i in range(1, 8)]:
            model = Ridge(alpha=alpha).fit(x_train, y_train)
            mse = float(mean_squared_error(y_test, model.predict(x_test)))
            check_stop()
            with mlflow.start_run(run_name=f"alpha{alpha}", nested=True):
                mlflow.log_param("alpha", alpha)
                mlflow.log_metric("mse", mse)
            mlflow.log_metric("alpha", alpha)
            mlflow.log_metric("mse", mse)
            results["alpha"].append(alpha)
            results["mse"].append(round(mse, 2))
        mlflow.log_table(results, artifact_file="results.json")
        figure = _plot(results["alpha"], [results["mse"]], "alpha", "mse on the test set")
        mlflow.log_figure(figure, "mse_vs_alpha.png")


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
            if step % PLOT_EVERY == 0:
                client.log_image(run_id, _prediction_plot(step, rng), key="predictions", step=step)
            step += 1
            stop.wait(1.0)
    except Exception as error:  # the server went away under us: the demo is ending
        log.warning("demo_training_stopped", error=str(error))
        return
    client.set_terminated(run_id, "FINISHED")


def _prediction_plot(step: int, rng: random.Random) -> Any:
    """The live run's prediction of a sine wave at `step`, closer to it as training goes on,
    as an RGB array."""
    import numpy as np

    x = [i / 20 for i in range(126)]
    fit = 1 - math.exp(-step / 60)
    target = [math.sin(v) for v in x]
    predicted = [fit * math.sin(v) + (1 - fit) * 0.3 * v + rng.gauss(0, 0.02) for v in x]
    figure = _plot(x, [target, predicted], "x", f"prediction at step {step}")
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    import matplotlib.pyplot as plt

    plt.close(figure)
    return image


def _plot(x: list[float], series: list[list[float]], xlabel: str, title: str) -> Any:
    """A small matplotlib figure of `series` against `x`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 3), dpi=80)
    for values in series:
        axes.plot(x, values, marker="o" if len(x) < 20 else None)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    figure.tight_layout()
    return figure
