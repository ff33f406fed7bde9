"""The seed's example (azureml-tensorboard's export_to_tensorboard sample), end to end:
a parent run logging `alpha` and `mse` without steps, and child runs alpha0.1 .. alpha0.7 with
param `alpha` and metric `mse`; read back from a real TensorBoard."""

from __future__ import annotations

import mlflow
import pytest

from conftest import TensorBoard, tb_run, wait_until

ALPHAS = [round(0.1 * i, 1) for i in range(1, 8)]


@pytest.fixture
def seed_experiment(fluent_mlflow: str, experiment_name: str) -> str:
    mlflow.set_experiment(experiment_name)
    with mlflow.start_run(run_name="sweep"):
        for alpha in ALPHAS:
            mse = 3000.0 - 1000 * alpha
            with mlflow.start_run(run_name=f"alpha{alpha}", nested=True):
                mlflow.log_param("alpha", alpha)
                mlflow.log_metric("mse", mse)
            mlflow.log_metric("alpha", alpha)
            mlflow.log_metric("mse", mse)
    return experiment_name


def test_seed_example_shows_nested_runs_stepless_series_and_hparams(
    sync, seed_experiment: str, tensorboard: TensorBoard, source_name: str
) -> None:
    sync([seed_experiment])

    parent = tb_run(source_name, seed_experiment, "sweep")
    children = {tb_run(source_name, seed_experiment, "sweep", f"alpha{a}") for a in ALPHAS}
    wait_until(lambda: children | {parent} <= set(tensorboard.runs()), 30, "all 8 runs")

    for tag, expected in (("alpha", ALPHAS), ("mse", [3000.0 - 1000 * a for a in ALPHAS])):
        points = tensorboard.wait_scalars(parent, tag, 7)
        assert [step for _, step, _ in points] == list(range(7))
        assert [value for _, _, value in points] == pytest.approx(expected, rel=1e-6)

    def sweep_sessions() -> list[dict]:
        groups = tensorboard.session_groups()
        mine = [g for g in groups if g["sessions"][0]["name"] in children]
        return mine if len(mine) == 7 and all(g["metricValues"] for g in mine) else []

    sessions = wait_until(sweep_sessions, 30, "7 HParams sessions")
    by_alpha = {group["hparams"]["alpha"]: group for group in sessions}
    assert sorted(by_alpha) == pytest.approx(ALPHAS)
    for alpha, group in by_alpha.items():
        (metric,) = [m for m in group["metricValues"] if m["name"]["tag"] == "mse"]
        assert metric["value"] == pytest.approx(3000.0 - 1000 * alpha)
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert not any(g["sessions"][0]["name"] == parent for g in tensorboard.session_groups())

    info = tensorboard.text(
        tb_run(source_name, seed_experiment, "sweep", "alpha0.3"), "mlflow (run info)"
    )
    assert "FINISHED" in info[-1]["text"] and "alpha" in info[-1]["text"]
