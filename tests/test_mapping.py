"""What else TensorBoard shows of a run: children logged into other experiments nest under their
parent, "*" mirrors every experiment (following renames), and the text summary carries status,
note, tags and a link back to MLflow."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from mlflow.entities import Metric

from conftest import (
    MlflowServer,
    TensorBoard,
    mlflow_source,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers import in_process
from helpers.in_process import MirrorView
from helpers.scripted_mlflow import ScriptedMlflow
from tbmirror.config import load_settings
from tbmirror.kinds.mlflow import check as mlflow_check
from tbmirror.kinds.mlflow.build import build_source


def test_child_runs_in_another_experiment_nest_under_their_parent_unless_switched_off(
    scripted_sync,
    tmp_path: Path,
    scripted: ScriptedMlflow,
    experiment_name: str,
    source_name: str,
) -> None:
    """In-process, against a scripted MLflow (helpers/scripted_mlflow.py)."""
    client = scripted.client()
    parent = client.create_run(
        client.create_experiment(experiment_name), run_name="parent"
    ).info.run_id
    other = client.create_experiment(f"{experiment_name}-elsewhere")
    child = client.create_run(
        other, run_name="child", tags={"mlflow.parentRunId": parent}
    ).info.run_id
    grandchild = client.create_run("0", run_name="grandchild", tags={"mlflow.parentRunId": child})
    for run_id in (parent, child, grandchild.info.run_id):
        client.log_batch(run_id, metrics=[Metric("m", 1.0, 1_700_000_000_000, 0)])

    scripted_sync([experiment_name])
    view = MirrorView(scripted_sync.root)
    nested = tb_run(source_name, experiment_name, "parent", "child", "grandchild")
    assert nested in view.runs(), "the grandchild nested under its parent"
    assert view.wait_scalars(nested, "m", 1)

    # `child_runs_in_other_experiments: false`: the configured experiment's runs only
    (tmp_path / "alone").mkdir()
    config = write_config(tmp_path / "alone" / "tbmirror.yaml", tmp_path / "alone" / "root", [
        mlflow_source("alone", scripted.url, [experiment_name],
                      child_runs_in_other_experiments=False),
    ])  # fmt: skip
    result = in_process.sync(config, scripted.transport)
    assert result.returncode == 0, result.stdout + result.stderr
    mirrored = tmp_path / "alone" / "root" / "alone" / experiment_name
    directories = sorted(str(d.relative_to(mirrored)) for d in mirrored.rglob("*") if d.is_dir())
    assert directories == ["parent"], directories


def test_text_summary_has_status_note_tags_and_a_link(
    sync,
    mlflow_server: MlflowServer,
    tensorboard: TensorBoard,
    experiment_name: str,
    source_name: str,
) -> None:
    client = mlflow_server.client()
    experiment_id = client.create_experiment(experiment_name)
    run_id = client.create_run(
        experiment_id, run_name="described", tags={"team": "vision|nlp"}
    ).info.run_id
    client.set_tag(run_id, "mlflow.note.content", "Baseline with **augmentation**.")
    client.log_param(run_id, "optimizer", "adam")
    ui = "https://viewer:hunter2-pw@mlflow.example.com"  # credentials never reach TensorBoard
    sync([experiment_name], ui_url=ui)
    run = tb_run(source_name, experiment_name, "described")
    tag = "mlflow (run info)"
    first = wait_until(lambda: tensorboard.text(run, tag), 30, "the run's text summary")[-1]["text"]
    assert "RUNNING" in first and "<strong>augmentation</strong>" in first
    link = f"https://mlflow.example.com/#/experiments/{experiment_id}/runs/{run_id}"
    assert f'href="{link}"' in first and "hunter2" not in first
    assert "vision|nlp" in first and "adam" in first

    client.set_terminated(run_id, "FAILED")
    sync([experiment_name], ui_url=ui)
    texts = wait_until(
        lambda: len(tensorboard.text(run, tag)) == 2 and tensorboard.text(run, tag),
        30,
        "a second text",
    )
    assert [t["step"] for t in texts] == [0, 1] and "FAILED" in texts[-1]["text"]


def test_all_experiments_follow_experiment_renames(
    scripted_sync,
    scripted: ScriptedMlflow,
    source_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process, against a scripted MLflow of its own (helpers/scripted_mlflow.py), since "*"
    mirrors everything on it: a renamed experiment's runs move (nothing fetched again), the old
    directory goes, and `check` lists the experiment by its new name."""
    client = scripted.client()
    experiment_id = client.create_experiment("before")
    run_id = client.create_run(experiment_id, run_name="r").info.run_id
    client.log_batch(run_id, metrics=[Metric("m", 2.0, 1_700_000_000_000, 0)])
    scripted_sync(["*"])
    view = MirrorView(scripted_sync.root)
    assert tb_run(source_name, "before", "r") in view.runs()

    client.rename_experiment(experiment_id, "after")
    result = scripted_sync(["*"])
    assert ", 0 points, 0 bytes" in result.stdout, result.stdout
    assert view.wait_scalars(tb_run(source_name, "after", "r"), "m", 1)[0][2] == 2.0
    assert not (scripted_sync.root / source_name / "before").exists()

    monkeypatch.setattr(
        mlflow_check, "build_source", functools.partial(build_source, transport=scripted.transport)
    )
    settings = load_settings(scripted_sync.config_path)
    found = mlflow_check.check(settings.sources[0])  # `tbmirror check`'s line for the source
    assert [(f.ok, f.text) for f in found] == [
        (True, f"{scripted.url} (auth none, artifacts mlflow, 2 experiments visible): "
               "experiments Default, after"),
    ]  # fmt: skip


def test_check_reports_each_source(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    mlflow_server.client().create_experiment(experiment_name)
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "root",
        [
            mlflow_source("good", mlflow_server.url, [experiment_name, "missing-one"]),
            mlflow_source("down", "http://127.0.0.1:9", ["x"], max_retries=0),
        ],
    )
    result = tbmirror("check", "--config", str(config))
    assert result.returncode == 1
    good = [line for line in result.stdout.splitlines() if line.startswith("ok    good: ")]
    assert good and good[0].startswith(
        f"ok    good: {mlflow_server.url} (auth none, artifacts mlflow, "
    )
    assert good[0].endswith(f"experiments visible): experiments {experiment_name}")
    assert "FAIL  good: experiment 'missing-one' not found (or deleted)" in result.stdout
    assert (
        "FAIL  down: http://127.0.0.1:9: GET /api/2.0/mlflow/experiments/get-by-name: "
        "cannot connect" in result.stdout
    )
