"""Hostile run and experiment names stay inside the mirror root and stay distinct; renames move a
run's directory, deletions remove it (on_delete: remove) or leave it (keep). In-process, against a
scripted MLflow (helpers/scripted_mlflow.py, held to a real server by test_scripted_mlflow.py); the
mirror read from its files as TensorBoard shows it (helpers/in_process.py: MirrorView)."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import new_run, tb_run
from helpers.in_process import MirrorView
from helpers.scripted_mlflow import Metric, ScriptedMlflow

HOSTILE = ["../../etc", "a/b", "nul\x00byte", "x" * 5000, "tab\tnew\nline", "same", "same"]
EXPECTED_DIRS = ["_._.._etc", "a_b", "nul_byte", "x" * 120, "tab_new_line", "same", None]


def all_paths(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]


def run_dirs(top: Path) -> dict[Path, list[str]]:
    """Directories under `top` that hold events files, with the file names."""
    found: dict[Path, list[str]] = {}
    for directory, _, files in os.walk(top):
        names = [name for name in files if "tfevents" in name]
        if names:
            found[Path(directory)] = names
    return found


def test_hostile_names_stay_inside_and_distinct_and_renames_and_deletions_are_mirrored(
    scripted_sync,
    scripted: ScriptedMlflow,
    experiment_name: str,
    source_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root
    view = MirrorView(mirror_root)
    hostile_experiment = f"../../{experiment_name}/x"
    experiment_id = client.create_experiment(hostile_experiment)
    run_ids = []
    for index, name in enumerate(HOSTILE):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_batch(run_id, metrics=[Metric("m", float(index), 1_700_000_000_000, 0)])
        run_ids.append(run_id)
    outside_before = set(mirror_root.parent.iterdir())

    sync([hostile_experiment])

    source_dir = mirror_root / source_name
    real_root = os.path.realpath(mirror_root)
    assert all(os.path.realpath(p).startswith(real_root + os.sep) for p in all_paths(mirror_root))
    assert set(mirror_root.parent.iterdir()) == outside_before
    (experiment_dir,) = source_dir.iterdir()
    assert experiment_dir.name == f"_._.._{experiment_name}_x"
    dirs = run_dirs(experiment_dir)
    assert len(dirs) == len(HOSTILE) and all(len(files) == 1 for files in dirs.values())
    expected = [*EXPECTED_DIRS[:-1], f"same-{run_ids[6][:8]}"]
    names = {path.name for path in dirs}
    assert names == set(expected)

    runs = {tb_run(source_name, experiment_dir.name, name) for name in names}
    assert runs <= set(view.runs()), "every hostile run shown"
    for index, name in enumerate(expected):
        run = tb_run(source_name, experiment_dir.name, name)
        assert view.wait_scalars(run, "m", 1)[0][2] == float(index)

    # Rename: the run's directory moves, its data with it; the old one is gone.
    client.update_run(run_ids[1], name="renamed")
    # Delete: the first "same" goes; the second keeps its own (suffixed) directory.
    client.delete_run(run_ids[5])
    sync([hostile_experiment])
    names_after = {path.name for path in run_dirs(experiment_dir)}
    assert names_after == (names - {"a_b", "same"}) | {"renamed"}
    renamed = tb_run(source_name, experiment_dir.name, "renamed")
    assert view.wait_scalars(renamed, "m", 1)[0][2] == 1.0
    gone = {tb_run(source_name, experiment_dir.name, n) for n in ("a_b", "same")}
    assert not gone & set(view.runs()), "removed runs are gone"

    # A restored run comes back, once.
    client.restore_run(run_ids[5])
    sync([hostile_experiment])
    restored = tb_run(source_name, experiment_dir.name, "same")
    assert restored in view.runs(), "the restored run is back"
    assert len(view.wait_scalars(restored, "m", 1)) == 1


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def mirror_one_run(client, sync, experiment: str, **settings: object) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """A run "kept" with one point, mirrored once; returns its id and relative path parts."""
    run_id = new_run(client, experiment, "kept")
    client.log_batch(run_id, metrics=[Metric("m", 1.0, 1_700_000_000_000, 0)])
    sync([experiment], **settings)
    return run_id, [experiment, "kept"]


def test_on_delete_keep_leaves_the_mirrored_run(
    scripted_sync, scripted: ScriptedMlflow, experiment_name: str, source_name: str
) -> None:
    sync, mirror_root = scripted_sync, scripted_sync.root
    client = scripted.client()
    run_id, parts = mirror_one_run(client, sync, experiment_name, on_delete="keep")
    run_dir = mirror_root.joinpath(source_name, *parts)
    content = files_of(run_dir)
    client.delete_run(run_id)
    sync([experiment_name], on_delete="keep")
    assert files_of(run_dir) == content


def test_runs_of_an_experiment_that_is_not_found_are_kept(
    scripted_sync, scripted: ScriptedMlflow, experiment_name: str, source_name: str
) -> None:
    sync, mirror_root = scripted_sync, scripted_sync.root
    """A typo in the config (or a renamed experiment) must not wipe a mirror."""
    _, parts = mirror_one_run(scripted.client(), sync, experiment_name)
    run_dir = mirror_root.joinpath(source_name, *parts)
    content = files_of(run_dir)
    result = sync([f"{experiment_name}-typo"])
    assert "experiments not found" in result.stdout
    assert files_of(run_dir) == content
