"""Start-up recovery when the disk disagrees with the state store: a damaged (shortened) or lost
events file makes its run be written again from scratch; an unknown events file is removed.
In-process, against a scripted MLflow (helpers/scripted_mlflow.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from helpers.scripted_mlflow import Metric, ScriptedMlflow


def scalar_steps(directory: Path) -> list[int]:
    (path,) = directory.glob("events.out.tfevents.*")
    return [
        event.step
        for event in map(Event.FromString, RawEventFileLoader(str(path)).Load())
        if event.summary.value and event.summary.value[0].tag == "m"
    ]


def test_damaged_lost_and_unknown_files(
    scripted_sync, scripted: ScriptedMlflow, experiment_name: str, source_name: str
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root
    experiment_id = client.create_experiment(experiment_name)
    for name in ("shortened", "lost"):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_batch(
            run_id, metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(50)]
        )
    sync([experiment_name])
    top = mirror_root / source_name / experiment_name
    (shortened,) = (top / "shortened").glob("events.*")
    shortened.write_bytes(shortened.read_bytes()[:-100])
    (lost,) = (top / "lost").glob("events.*")
    lost.unlink()
    stray = top / "lost" / "events.out.tfevents.1700000000.elsewhere.1.1"
    stray.write_bytes(b"not ours")

    result = sync([experiment_name])
    assert result.stderr.count("events_file_damaged_run_reset") == 2
    assert "orphan_events_file_removed" in result.stderr and not stray.exists()
    assert scalar_steps(top / "shortened") == list(range(50))
    assert scalar_steps(top / "lost") == list(range(50))


def test_one_broken_run_does_not_stop_the_others(
    scripted_sync, scripted: ScriptedMlflow, experiment_name: str, source_name: str
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root
    experiment_id = client.create_experiment(experiment_name)
    runs = {}
    for name in ("broken", "fine"):
        runs[name] = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_batch(runs[name], metrics=[Metric("m", 1.0, 1_700_000_000_000, 0)])
    sync([experiment_name])
    top = mirror_root / source_name / experiment_name
    shutil.rmtree(top / "broken")
    (top / "broken").write_text("a file where the run's directory was")
    for run_id in runs.values():
        client.log_batch(run_id, metrics=[Metric("m", 2.0, 1_700_000_000_001, 1)])

    result = sync([experiment_name], check=False)
    assert result.returncode == 1
    assert f"1 run failed: {runs['broken']}" in result.stdout
    assert scalar_steps(top / "fine") == [0, 1]

    (top / "broken").unlink()  # repaired: the lost file makes recovery write the run again
    sync([experiment_name])
    assert scalar_steps(top / "broken") == [0, 1]
