"""Retention (issue 13), in-process against a scripted MLflow (helpers/scripted_mlflow.py, held to
a real server by test_scripted_mlflow.py): a run that leaves the selection goes to
`mirror.archive` with its children and comes back from it without a history request; archived
runs keep distinct names; under a filter a parent leaving takes its children for good."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import mlflow_source, write_config
from helpers import in_process
from helpers.scripted_mlflow import ScriptedMlflow
from test_retention import HISTORY, make_window, tree
from test_selection import make_run


@pytest.fixture
def window(tmp_path: Path, scripted: ScriptedMlflow, experiment_name: str) -> dict[str, Any]:
    """`make_window` (test_retention.py) on the scripted server."""
    return make_window(tmp_path, scripted.client(), scripted.url, experiment_name)


def sync(server: ScriptedMlflow, config: Path) -> str:
    """`tbmirror sync`, in-process; its summary lines."""
    result = in_process.sync(config, server.transport)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_run_leaving_the_window_is_archived_and_comes_back_without_history_requests(
    scripted: ScriptedMlflow, window: dict[str, Any]
) -> None:
    config: Callable[[int], Path] = window["config"]
    sync(scripted, config(2))
    mirrored = tree(window["root"] / "older")
    assert "child" in {p.split("/")[0] for p in mirrored} and len(mirrored) == 2

    assert "2 left the selection" in sync(scripted, config(1))  # older, and its child with it
    assert not (window["root"] / "older").exists()
    assert tree(window["archive"] / "older") == mirrored
    assert set(tree(window["root"])) == {p for p in tree(window["root"]) if p.startswith("newer")}

    before = len(scripted.requests)
    sync(scripted, config(2))
    assert tree(window["root"] / "older") == mirrored  # back, byte for byte
    assert not (window["archive"] / "older").exists()
    back = [s.target for s in scripted.requests[before:] if HISTORY in s.target]
    assert back == [], back  # nothing fetched again


def test_archived_runs_keep_distinct_names_children_and_a_dropped_archive_costs_a_refetch(
    tmp_path: Path, scripted: ScriptedMlflow, window: dict[str, Any], experiment_name: str
) -> None:
    config: Callable[[int], Path] = window["config"]
    client = scripted.client()
    sync(scripted, config(2))
    sync(scripted, config(1))  # older (and its child) archived
    time.sleep(0.01)
    again = make_run(client, experiment_name, "older", start_ms=int(time.time() * 1000))
    sync(
        scripted, config(1)
    )  # the new "older" takes the root's name; "newer" leaves for the archive
    make_run(client, experiment_name, "newest", start_ms=int(time.time() * 1000) + 1000)
    sync(scripted, config(1))  # the new "older" leaves too: the archive's "older" is taken
    archived = {p.split("/")[0] for p in tree(window["archive"])}
    assert archived == {"older", f"older-{again[:8]}", "newer"}, archived
    assert {p.split("/")[0] for p in tree(window["root"])} == {"newest"}

    sync(scripted, config(4))  # all back, each once, the child still with its parent
    back = {str(Path(p).parent) for p in tree(window["root"])}
    assert {"older", "older/child", "newer", "newest"} <= back and len(back) == 5, back
    assert tree(window["archive"]) == {}

    sync(scripted, config(1))
    plain = write_config(tmp_path / "plain.yaml", tmp_path / "root",
                         [mlflow_source("src", window["url"], [experiment_name])])  # fmt: skip
    sync(scripted, plain)  # no archive any more: archived runs are mirrored anew, nothing fails
    assert {"older/child", "newer", "newest"} <= {str(Path(p).parent) for p in tree(window["root"])}


def test_under_a_filter_a_parent_leaving_takes_its_children_for_good(
    tmp_path: Path, scripted: ScriptedMlflow, experiment_name: str
) -> None:
    client = scripted.client()
    parent = make_run(client, experiment_name, "parent", team="vision")
    make_run(client, experiment_name, "child", parent=parent)  # children carry no team tag
    root, archive = tmp_path / "root", tmp_path / "archive"

    def config(team: str) -> Path:
        source = mlflow_source("src", scripted.url, [experiment_name],
                               filter=f"tags.team = '{team}'")  # fmt: skip
        path = write_config(tmp_path / "tbmirror.yaml", root, [source])
        path.write_text(path.read_text().replace("  state:", f"  archive: {archive}\n  state:"))
        return path

    sync(scripted, config("vision"))
    assert {str(Path(p).parent) for p in tree(root / "src" / experiment_name)} == {
        "parent", "parent/child",
    }  # fmt: skip
    assert "2 left the selection" in sync(scripted, config("nlp"))
    for _ in range(2):  # and they stay out
        assert tree(root / "src" / experiment_name) == {}
        assert {str(Path(p).parent) for p in tree(archive / "src" / experiment_name)} == {
            "parent", "parent/child",
        }  # fmt: skip
        sync(scripted, config("nlp"))
