"""Long series stream into the mirror page by page (issue 14): a series longer than one get-history
page is written a page a batch, its cursor committed with each page, so a pass cut short resumes
where it stopped; a series rewritten upstream is diffed page by page against compact marks of
what was written. A scripted MLflow (helpers/scripted_mlflow.py, held to a real server by
test_scripted_mlflow.py) breaks pages on demand."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import json_log_lines, mlflow_source, new_run, scalars_in, tb_run, write_config
from helpers import in_process
from helpers.in_process import MirrorView
from helpers.scripted_mlflow import Metric, ScriptedMlflow
from tbmirror.engine.mlflow.encoding import SeriesStream
from tbmirror.engine.mlflow.written import WrittenMarks
from tbmirror.mirror import events, summaries
from tbmirror.model import Cursor, MetricPoint
from tbmirror.sources.mlflow.client import HISTORY_PAGE_SIZE
from tbmirror.sources.mlflow.history import offset_token

T0 = 1_700_000_000_000
POINTS = 2 * HISTORY_PAGE_SIZE + 5_000  # three pages


def log_points(client: Any, run_id: str, steps: range, timestamp: Callable[[int], int]) -> None:
    for start in range(steps.start, steps.stop, 1000):
        batch = range(start, min(start + 1000, steps.stop))
        client.log_batch(run_id, metrics=[Metric("loss", s / 3, timestamp(s), s) for s in batch])


@pytest.mark.e2e  # a full-size workload: 55,000 points through six passes (seconds)
def test_a_long_series_is_written_a_page_a_batch_and_resumes_after_a_failed_page(
    tmp_path: Path, scripted: ScriptedMlflow, source_name: str, experiment_name: str
) -> None:
    """In-process, against a scripted MLflow (helpers/scripted_mlflow.py) with the hostile
    proxy's faults; the series read from the events files as TensorBoard shows them."""
    client, proxy, mirror_root = scripted.client(), scripted, tmp_path / "mirror"
    run_id = new_run(client, experiment_name, "long")
    log_points(client, run_id, range(POINTS), lambda step: T0 + step)
    config = write_config(
        tmp_path / "tbmirror.yaml",
        mirror_root,
        [mlflow_source(source_name, scripted.url, [experiment_name], max_retries=0)],
    )
    run_dir = mirror_root / source_name / experiment_name / "long"
    tensorboard = MirrorView(mirror_root)

    def sync(*args: str) -> Any:
        return in_process.sync(config, scripted.transport, *args)

    # The second page of get-history fails: the first page is committed, with its cursor.
    proxy.set("status", path=r"/metrics/get-history\?.*page_token", code=500)
    result = sync()
    assert result.returncode == 1 and run_id in result.stdout + result.stderr
    assert len(scalars_in(run_dir, "loss")) == HISTORY_PAGE_SIZE
    proxy.clear()
    result = sync()
    assert result.returncode == 0, result.stdout + result.stderr
    points = tensorboard.wait_scalars(tb_run(source_name, experiment_name, "long"), "loss", POINTS)
    assert [int(point[1]) for point in points] == list(range(POINTS))
    pages = [seen for seen in proxy.seen(r"/metrics/get-history\?") if seen.status == 200]
    assert len(pages) == 1 + 2  # the first page; then from offset 24,999 (the boundary) on

    # A late point lands before the cursor (an older timestamp): the whole series is diffed
    # page by page, and only what is new is written.
    client.log_batch(run_id, metrics=[Metric("loss", -1.0, T0 - 5, POINTS)])
    log_points(client, run_id, range(POINTS + 1, POINTS + 11), lambda step: T0 + step)
    result = sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "history_rewritten_upstream" in result.stderr
    marks = scalars_in(run_dir, "loss")
    assert len(marks) == POINTS + 11 and len(set(marks)) == POINTS + 11
    result = sync()  # nothing new: nothing written
    assert "0 points" in result.stdout, result.stdout

    # A late point that changes nothing the listing shows (an older time, a lower step): only a
    # reconcile finds it. The diff's second page fails; the next pass, no reconcile due, goes on.
    client.log_batch(run_id, metrics=[Metric("loss", -2.0, T0 + 30_000, 3)])  # in page 2
    check = urllib.parse.quote(offset_token(POINTS + 10), safe="")
    proxy.set("status", path=rf"/get-history\?(?!.*page_token={check}).*page_token=", code=500)
    result = sync("--reconcile")
    assert result.returncode == 1, result.stdout + result.stderr
    proxy.clear()
    result = sync()
    assert result.returncode == 0 and ", 1 points," in result.stdout, result.stdout
    marks = scalars_in(run_dir, "loss")
    assert len(marks) == POINTS + 12 and len(set(marks)) == POINTS + 12


def test_a_diff_cut_short_keeps_the_cursor_so_it_is_diffed_again(tmp_path: Path) -> None:
    """Unit: a diff's pages commit only the step they reached, and no `seen` (so the next pass
    fetches the series again); count, last point and `seen` wait for its end. Run again over the
    same files, a diff finds nothing twice."""
    written = [MetricPoint(T0 + i, i, float(i)) for i in range(10)]
    encoder = summaries.ScalarEncoder("loss")
    data = events.frame(summaries.file_version(1.7e9)) + b"".join(
        events.frame(encoder.encode(p.timestamp / 1000, p.step, p.value)) for p in written
    )
    (tmp_path / "events.out.tfevents.1.x").write_bytes(data)
    late = MetricPoint(T0 - 1, 10, -1.0)
    series = [late, *written, MetricPoint(T0 + 10, 11, 10.0)]
    old = Cursor(10, written[-1], tb_step=9, seen=written[-1])
    seen = series[-1]

    stream = SeriesStream("loss", replace(old), iter(()), seen, tmp_path)
    records = stream.take(series[:6])
    assert len(records) == 1  # the late point; five were written
    with (tmp_path / "events.out.tfevents.1.x").open("ab") as file:
        file.write(events.frame_all(records))  # committed with `cut`; then the pass was cut
    cut = stream.committed()
    assert (cut.count, cut.last, cut.seen, cut.tb_step) == (10, written[-1], None, 10)
    records = stream.take(series[6:])
    assert len(records) == 1
    done = stream.finished()
    assert (done.count, done.last, done.seen, done.tb_step) == (12, series[-1], seen, 11)

    again = SeriesStream("loss", cut, iter(()), seen, tmp_path)
    assert len(again.take(series)) == 1  # the late point is among the marks now: only the last


def test_each_written_point_matches_one_source_point(tmp_path: Path) -> None:
    """Unit: a point repeated in a series (same time and value) matches as many written copies
    as there are, no more; one written once matches once."""
    encoder = summaries.ScalarEncoder("loss")
    same = MetricPoint(T0, 0, 1.0)
    once = MetricPoint(T0 + 1, 1, 2.0)
    written = [same, same, same, once]
    data = events.frame(summaries.file_version(1.7e9)) + b"".join(
        events.frame(encoder.encode(p.timestamp / 1000, p.step, p.value)) for p in written
    )
    (tmp_path / "events.out.tfevents.1.x").write_bytes(data)
    marks = WrittenMarks(tmp_path, "loss")
    assert marks.unwritten([same, once, same]) == []
    assert marks.unwritten([same, same, once]) == [same, once]


@pytest.mark.e2e  # a full-size workload: 55,000 points through two passes (seconds)
def test_a_corrupt_events_file_read_back_fails_its_run_alone(
    tmp_path: Path, scripted: ScriptedMlflow, source_name: str, experiment_name: str
) -> None:
    """A series rewritten upstream is diffed against what its run's events files hold; when a
    record there no longer checks out (a disk that flipped a byte), that run fails, named, and
    keeps its files as they were, while the pass goes on and the other runs get their points."""
    client, mirror_root = scripted.client(), tmp_path / "mirror"
    long_id = new_run(client, experiment_name, "long")
    log_points(client, long_id, range(POINTS), lambda step: T0 + step)
    other_id = new_run(client, experiment_name, "other")
    log_points(client, other_id, range(10), lambda step: T0 + step)
    config = write_config(
        tmp_path / "tbmirror.yaml",
        mirror_root,
        [mlflow_source(source_name, scripted.url, [experiment_name], max_retries=0)],
    )
    experiment_dir = mirror_root / source_name / experiment_name
    result = in_process.sync(config, scripted.transport)
    assert result.returncode == 0, result.stdout + result.stderr

    (events_file,) = [p for p in (experiment_dir / "long").iterdir() if ".tfevents." in p.name]
    data = bytearray(events_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a committed record: its CRC no longer checks out
    events_file.write_bytes(bytes(data))
    client.log_batch(long_id, metrics=[Metric("loss", -1.0, T0 - 5, POINTS)])  # rewritten
    log_points(client, other_id, range(10, 20), lambda step: T0 + step)
    files = sorted((experiment_dir / "long").iterdir())

    result = in_process.sync(config, scripted.transport)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [e for e in json_log_lines(result.stderr) if e.get("event") == "run_failed"]
    assert [e["run_id"] for e in failed] == [long_id], failed
    assert failed[0]["error"].startswith("corrupt record at byte "), failed
    assert sorted((experiment_dir / "long").iterdir()) == files  # no file added beside it
    assert events_file.read_bytes() == bytes(data)  # nothing appended to the damaged file
    assert len(scalars_in(experiment_dir / "other", "loss")) == 20
