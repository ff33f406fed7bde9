"""Choosing what is mirrored (issue 13): `filter`, `run_statuses`, `max_age`, `max_runs` and
experiment globs; runs that leave the selection leave the mirror, their children with them. The
selection is judged in-process against a scripted MLflow (helpers/scripted_mlflow.py, held to a
real server by test_scripted_mlflow.py); a filter the server refuses, and `check`'s count, against
a real `mlflow server`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import MlflowServer, tbmirror
from helpers.in_process import MirrorView
from helpers.scripted_mlflow import ScriptedMlflow

DAY_MS = 86_400_000


def make_run(
    client: Any,
    experiment: str,
    name: str,
    status: str | None = "FINISHED",
    start_ms: int | None = None,
    end_ms: int | None = None,
    parent: str | None = None,
    **tags: str,
) -> str:
    """A run with one metric point, ended with `status` (None: left running)."""
    existing = client.get_experiment_by_name(experiment)
    experiment_id = existing.experiment_id if existing else client.create_experiment(experiment)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = str(
        client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info.run_id
    )
    client.log_metric(run_id, "loss", 1.0, step=0)
    if status:
        client.set_terminated(run_id, status, end_time=end_ms)
    return run_id


def mirrored(root: Path, source: str, experiment: str) -> set[str]:
    """Run directories (nested ones as paths) that hold an events file."""
    base = root / source / experiment
    if not base.is_dir():
        return set()
    return {
        str(path.parent.relative_to(base))
        for path in base.rglob("*tfevents*")
        if path.parent.relative_to(base).parts[-1:] != ("artifacts",)
    }


def test_a_filter_by_tag_and_by_metric_with_experiment_globs(
    scripted: ScriptedMlflow,
    scripted_sync: Callable[..., Any],
    source_name: str,
    experiment_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root  # type: ignore[attr-defined]
    first, second, other = f"{experiment_name}-a", f"{experiment_name}-b", f"x-{experiment_name}"
    vision = make_run(client, first, "vision", team="vision")
    make_run(client, first, "tuned", parent=vision)  # no tag of its own: it follows its parent
    make_run(client, first, "nlp", team="nlp")
    make_run(client, second, "vision2", team="vision")
    make_run(client, other, "vision3", team="vision")  # not matched by the glob
    client.log_metric(vision, "val_acc", 0.9)

    result = sync([f"{experiment_name}-*"], filter="tags.team = 'vision'")
    assert mirrored(mirror_root, source_name, first) == {"vision", "vision/tuned"}, result.stdout
    assert mirrored(mirror_root, source_name, second) == {"vision2"}
    assert mirrored(mirror_root, source_name, other) == set()
    assert f"{source_name}/{first}/vision/tuned" in MirrorView(mirror_root).runs()

    # A stricter filter: the runs it no longer matches leave (proven by a search for each).
    result = sync([f"{experiment_name}-*"], filter="metrics.val_acc > 0.8")
    assert "1 left the selection" in result.stdout, result.stdout
    assert mirrored(mirror_root, source_name, first) == {"vision", "vision/tuned"}
    assert mirrored(mirror_root, source_name, second) == set()
    assert f"{source_name}/{second}/vision2" not in MirrorView(mirror_root).runs()


def test_max_age_and_run_statuses_judge_top_level_runs_and_children_follow(
    scripted: ScriptedMlflow,
    scripted_sync: Callable[..., Any],
    source_name: str,
    experiment_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root  # type: ignore[attr-defined]
    now = int(time.time() * 1000)
    old = make_run(
        client, experiment_name, "old", start_ms=now - 4 * DAY_MS, end_ms=now - 3 * DAY_MS
    )
    make_run(client, experiment_name, "old-child", parent=old, end_ms=now)
    make_run(client, experiment_name, "recent", start_ms=now - DAY_MS, end_ms=now - 1000)
    make_run(client, experiment_name, "failed", status="FAILED", end_ms=now)
    live = make_run(client, experiment_name, "live", status=None)

    sync([experiment_name], max_age="2d")
    assert mirrored(mirror_root, source_name, experiment_name) == {"recent", "failed", "live"}

    sync([experiment_name], max_age="2d", run_statuses=["RUNNING", "FINISHED"])
    assert mirrored(mirror_root, source_name, experiment_name) == {"recent", "live"}

    client.set_terminated(live, "KILLED")  # leaves the selection: runs/get proves it
    result = sync([experiment_name], max_age="2d", run_statuses=["RUNNING", "FINISHED"])
    assert "1 left the selection" in result.stdout, result.stdout
    assert mirrored(mirror_root, source_name, experiment_name) == {"recent"}

    sync([experiment_name])  # no selection: everything (back)
    assert mirrored(mirror_root, source_name, experiment_name) == {
        "old", "old/old-child", "recent", "failed", "live",
    }  # fmt: skip


def test_max_runs_keeps_the_most_recent_top_level_runs_with_their_children(
    scripted: ScriptedMlflow,
    scripted_sync: Callable[..., Any],
    source_name: str,
    experiment_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root  # type: ignore[attr-defined]
    now = int(time.time() * 1000)
    runs = {
        name: make_run(client, experiment_name, name, start_ms=now - age * 60_000)
        for name, age in (("oldest", 40), ("older", 30), ("newer", 20), ("newest", 10))
    }
    make_run(client, experiment_name, "trial", parent=runs["newer"], start_ms=now - 100 * 60_000)
    make_run(client, experiment_name, "trial2", parent=runs["older"], start_ms=now)

    sync([experiment_name], max_runs=2)
    assert mirrored(mirror_root, source_name, experiment_name) == {
        "newest", "newer", "newer/trial",
    }  # fmt: skip

    make_run(client, experiment_name, "latest", start_ms=now)
    result = sync([experiment_name], max_runs=2)
    assert "2 left the selection" in result.stdout, result.stdout  # newer and its child
    assert mirrored(mirror_root, source_name, experiment_name) == {"latest", "newest"}


def test_a_filter_the_server_refuses_is_one_error_naming_the_key_and_check_counts(
    mlflow_server: MlflowServer,
    mirror_root: Path,
    sync: Callable[..., Any],
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    make_run(client, experiment_name, "kept", team="vision")
    make_run(client, experiment_name, "kept2", team="vision")
    make_run(client, experiment_name, "dropped", team="nlp")
    sync([experiment_name], filter="tags.team = 'vision'")

    result = sync([experiment_name], check=False, filter="tags.team = vision(")
    assert result.returncode == 1
    assert "filter: the server refused 'tags.team = vision(': " in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    assert mirrored(mirror_root, source_name, experiment_name) == {"kept", "kept2"}

    sync([experiment_name], filter="tags.team = 'vision'")
    checked = tbmirror("check", "--config", str(sync.config_path))  # type: ignore[attr-defined]
    # (the config's TensorBoard and health ports are the defaults, which may be taken here)
    assert f"FAIL  {source_name}" not in checked.stdout, checked.stdout + checked.stderr
    assert f"{experiment_name} (2 runs selected)" in checked.stdout, checked.stdout


def test_children_follow_their_parent_in_quick_and_full_listings() -> None:
    from tbmirror.config import MlflowSourceSettings
    from tbmirror.engine.mlflow.selection import MAX_RUNS, PARENT, STATUS, Selection
    from tbmirror.model import RunSnapshot

    def run(run_id: str, status: str = "FINISHED", parent: str | None = None,
            start: int = 0) -> RunSnapshot:  # fmt: skip
        return RunSnapshot(run_id, "1", run_id, status, "active", start, start, parent)

    def selection(**settings: Any) -> Selection:
        source = MlflowSourceSettings(name="s", tracking_uri="http://h",
                                      experiments=["e"], **settings)  # fmt: skip
        return Selection(source, time.time)

    running = selection(run_statuses=["RUNNING"])
    quick = [run("child", "RUNNING", parent="p")]  # a quick listing: the parent is not in it
    assert running.apply(quick, False, in_root={"p"}).out == {}
    assert running.apply(quick, False, in_root=(), archived={"p"}).out == {"child": PARENT}
    assert running.apply(quick, False, in_root=()).out == {}  # parent unknown: judged itself
    filtered = selection(filter="tags.team = 'x'")
    assert filtered.apply(quick, False, in_root=()).out == {"child": PARENT}

    full = [run("old", start=1), run("new", start=2), run("kid", parent="old", start=3),
            run("failed", "FAILED", start=4)]  # fmt: skip
    chosen = selection(max_runs=1, run_statuses=["FINISHED"]).apply(full, True, in_root=())
    assert chosen.out == {"failed": STATUS, "old": MAX_RUNS, "kid": PARENT}
    assert [r.run_id for r in chosen.runs] == ["new"]
    unlimited = selection(max_runs=1).apply(full, False, in_root=())  # max_runs: full only
    assert unlimited.out == {}
