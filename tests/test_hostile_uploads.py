"""Hostile upload directories: a file swapped for a FIFO never blocks a pass, a poison value in a
metric log is skipped with one warning per file and cause (and the rest of the file mirrored),
warnings are once per file and cause and print no data values."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from tensorboard.compat.proto.event_pb2 import Event

from conftest import tbmirror, write_config
from tbmirror.config import UploadsSourceSettings, parse_settings
from tbmirror.engine.base import PassReport
from tbmirror.engine.uploads import UploadEngine
from tbmirror.errors import UnsafePathError
from tbmirror.journal import Journal
from tbmirror.mirror import events
from tbmirror.mirror.convert import MAX_WARNED, LineConverter
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.sources.uploads import LocalFile

HANG_SECONDS = 5


def uploads_settings(tmp_path: Path, uploads: Path, **settings: Any) -> UploadsSourceSettings:
    source = {"name": "up", "type": "uploads", "path": str(uploads), **settings}
    document = {
        "mirror": {"root": str(tmp_path / "root"), "state": str(tmp_path / "state.db")},
        "sources": [source],
    }
    parsed = parse_settings(json.dumps(document)).sources[0]
    assert isinstance(parsed, UploadsSourceSettings)
    return parsed


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    opened = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    opened.own("up")
    yield opened
    opened.close()


def points_in(directory: Path) -> list[tuple[str, int, float, float]]:
    """(tag, step, wall_time, value) of every scalar in the events files of `directory`."""
    found = []
    for path in sorted(directory.iterdir()):
        for record in events.iter_records(path.read_bytes()):
            event = Event.FromString(record.payload)
            for value in event.summary.value:
                found.append((value.tag, event.step, event.wall_time, value.simple_value))
    return found


def without_hanging(what: str, call: Callable[[], Any], fifo: Path) -> Any:
    """`call()` in a thread; fails the test if it is still running after HANG_SECONDS (then the
    FIFO is opened for writing, which releases a reader blocked in open())."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(HANG_SECONDS)
        pytest.fail(f"{what} blocked on a FIFO for {HANG_SECONDS} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_an_upload_file_swapped_for_a_fifo_never_blocks_a_pass(
    tmp_path: Path, journal: Journal
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "a.csv").write_text("step,loss\n1,0.5\n")
    (uploads / "b.csv").write_text("step,loss\n1,0.25\n")
    fifo = uploads / "b.csv"

    # Opening a FIFO as an upload file is refused at once.
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        without_hanging(
            "LocalFile", lambda: LocalFile(str(tmp_path / "pipe.csv"), str(tmp_path)),
            tmp_path / "pipe.csv",
        )  # fmt: skip

    # b.csv is listed as a regular file, then swapped for a FIFO before the pass opens it.
    engine = UploadEngine(uploads_settings(tmp_path, uploads), journal)

    def swap(done: int, total: int) -> None:
        if done == 1:
            fifo.unlink()
            os.mkfifo(fifo)

    report: PassReport = without_hanging("a rescan", lambda: engine.run_pass(progress=swap), fifo)
    assert report.runs_listed == 2 and report.failed_runs == ["b.csv"]
    assert report.points == 1 and report.failure is None
    # The next rescan does not list the FIFO at all.
    again: PassReport = without_hanging("a rescan", engine.run_pass, fifo)
    assert again.runs_listed == 1 and again.failed_runs == [] and again.failure is None


def json_lines(*records: str) -> str:
    return "".join(record + "\n" for record in records)


def warnings(output: str) -> list[dict[str, Any]]:
    """The JSON log lines at level warning or above in a command's output."""
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("level") in ("warning", "error", "critical"):
                found.append(entry)
    return found


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_poison_values_are_skipped_once_per_file_and_cause_and_the_rest_is_mirrored(
    tmp_path: Path,
) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "root"
    uploads.mkdir()
    jsonl = uploads / "poison.jsonl"
    jsonl.write_text(json_lines(
        '{"step": 1, "loss": 1.0}',
        '{"step": 1e19, "loss": 666.0}',  # beyond int64
        '{"step": 2, "loss": 2.0}',
        '{"step": NaN, "loss": 666.0}',
        '{"step": -Infinity, "loss": 666.0}',
        '{"step": -1e19, "loss": 666.0}',  # negative overflow
        '{"step": 99999999999999999999, "loss": 666.0}',  # an integer beyond int64
        '{"step": 3, "loss": 3.0, "wall_time": 1e300}',  # absurd: read time used instead
        '{"step": 4, "loss": 4.0, "wall_time": -5}',
        '{"step": 5, "loss": 5.0, "deep": ' + '{"a": ' * 900 + "1" + "}" * 900 + "}",
        '{"step": 9223372036854775807, "loss": 6.0}',  # the last step int64 can hold
        '{"step": 6, "loss": 666.0}',  # the step rule would need 2**63: skipped
    ))  # fmt: skip
    csv = uploads / "poison.csv"
    csv.write_text(
        "step,loss,phase\n1,1.0,train-secret-value\n1e19,666,x\n2,2.0,y\nnan,666,z\n-inf,666,z\n"
        "3,3.0,z\n"
    )
    config = write_config(
        tmp_path / "c.yaml", root, [{"name": "up", "type": "uploads", "path": str(uploads)}]
    )

    first = tbmirror("sync", "--config", str(config), timeout=120)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    assert "Traceback" not in output and "train-secret-value" not in output
    jsonl_points = points_in(root / "up" / "poison.jsonl")
    assert [(step, value) for _, step, _, value in jsonl_points] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (9223372036854775807, 6.0)
    ]  # fmt: skip
    wall_times = [wall_time for _, _, wall_time, _ in jsonl_points]
    assert all(1.6e9 < wall_time < 1e10 for wall_time in wall_times), wall_times
    csv_points = points_in(root / "up" / "poison.csv")
    assert [(tag, step, value) for tag, step, _, value in csv_points] == [
        ("loss", 1, 1.0), ("loss", 2, 2.0), ("loss", 3, 3.0)
    ]  # fmt: skip

    causes = [(w["file"], w["event"], w.get("column")) for w in warnings(output)]
    assert sorted(causes) == sorted([
        ("poison.jsonl", "invalid_step_skipped", "step"),
        ("poison.jsonl", "wall_time_out_of_range", "wall_time"),
        ("poison.jsonl", "nested_too_deep_skipped", "deep"),
        ("poison.jsonl", "step_overflow_skipped", "loss"),
        ("poison.csv", "invalid_step_skipped", "step"),
        ("poison.csv", "non_numeric_column_ignored", "phase"),
    ]), causes  # fmt: skip
    lines = {(w["file"], w["event"]): w["line"] for w in warnings(output)}
    assert lines[("poison.jsonl", "invalid_step_skipped")] == 2
    assert lines[("poison.csv", "non_numeric_column_ignored")] == 2
    assert lines[("poison.csv", "invalid_step_skipped")] == 3

    # More of the same causes, and good lines, appended: no new warning, the good lines mirrored.
    with csv.open("a") as file:
        file.write("1e300,666,q\n4,4.0,q\n")
    with jsonl.open("a") as file:
        file.write(json_lines('{"step": 1e20, "loss": 666.0}', '{"loss": 7.0, "step": 1}'))
    second = tbmirror("sync", "--config", str(config), timeout=120)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "Traceback" not in output
    assert warnings(output) == []
    assert [step for _, step, _, _ in points_in(root / "up" / "poison.csv")][-1] == 4
    assert len(points_in(root / "up" / "poison.jsonl")) == len(jsonl_points)  # step 2**63 again


def test_a_file_over_max_file_size_is_warned_about_once(tmp_path: Path, journal: Journal) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    big = uploads / "big.csv"
    big.write_text("step,loss\n" + "".join(f"{i},{i}.5\n" for i in range(100)))
    engine = UploadEngine(uploads_settings(tmp_path, uploads, max_file_size=256), journal)
    with capture_logs() as logs:
        for i in range(3):
            engine.run_pass()
            with big.open("a") as file:
                file.write(f"{100 + i},0.5\n")
    skipped = [entry for entry in logs if entry["event"] == "upload_skipped"]
    assert len(skipped) == 1, skipped
    assert "larger than max_file_size" in skipped[0]["problem"]

    # A file that is gone is forgotten (the warning state stays as large as the tree): the same
    # name, too large again later, is a new file and is warned about again.
    big.unlink()
    engine.run_pass()
    big.write_text("step,loss\n" + "".join(f"{i},{i}.5\n" for i in range(100)))
    with capture_logs() as logs:
        engine.run_pass()
        engine.run_pass()
    assert [entry["event"] for entry in logs] == ["upload_skipped"]


def test_the_warnings_a_metric_log_can_cause_are_bounded() -> None:
    """A log whose every line has a new non-numeric key warns a bounded number of times and keeps
    a bounded state (it is stored with the file's record after every read)."""
    text = "".join(
        json.dumps({"step": i, "loss": 0.5, f"note-{i}": "text"}) + "\n" for i in range(500)
    )
    with capture_logs() as logs:
        converter = LineConverter("jsonl")
        payloads, consumed = converter.feed(text.encode(), 1.7e9)
    assert consumed == len(text) and len(payloads) == 500
    assert len(logs) <= MAX_WARNED + 1 and logs[-1]["event"] == "metric_log_warnings_capped"
    state = converter.state()
    assert len(state["warned"]) <= MAX_WARNED + 1 and len(json.dumps(state)) < 10_000
    assert converter.skipped == {"non_numeric": 500}
