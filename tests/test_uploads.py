"""Upload directories: real writers, real files, the real `tbmirror` command and daemon, read back
from a real TensorBoard."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tensorboard.compat.proto.event_pb2 import Event

from conftest import (
    REPO,
    DaemonProcess,
    TensorBoard,
    TensorBoardReader,
    daemon_config,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.kills import BATCH_STEPS, files_cut, kill_at_step, recovered_events
from tbmirror.mirror import events, summaries

WRITER = REPO / "tests" / "helpers" / "tfevents_writer.py"


def uploads_source(name: str, path: Path, **settings: Any) -> dict[str, Any]:
    return {"name": name, "type": "uploads", "path": str(path), **settings}


def start_writer(
    kind: str, logdir: Path, start: int, count: int, interval: float
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), kind, str(logdir), str(start), str(count), str(interval)]
    )


def float32(value: float) -> float:
    return float(np.float32(value))


def assert_steps_and_values(
    points: list[list[float]], steps: list[int], values: list[float]
) -> None:
    """TensorBoard's [[wall_time, step, value], ...] hold exactly these steps and values."""
    assert [int(p[1]) for p in points] == steps
    assert [p[2] for p in points] == pytest.approx([float32(v) for v in values], rel=1e-6)


@pytest.mark.parametrize(
    ("writer", "observer"), [("tensorboardx", "native"), ("tensorboard", "polling")]
)
def test_a_live_writer_is_mirrored_through_a_daemon_restart(
    writer: str,
    observer: str,
    tmp_path: Path,
    source_name: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    job = uploads / "team" / "job-1"
    job.mkdir(parents=True)
    source = uploads_source(
        source_name, uploads, observer=observer, polling_interval="0.5s", rescan_interval="1h"
    )
    config, tensorboard_url, _ = daemon_config(tmp_path / "tbmirror.yaml", root, [source])
    board = TensorBoardReader(tensorboard_url)
    run = tb_run(source_name, "team", "job-1")

    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    first = start_writer(writer, job, 0, 60, 0.05)
    assert first.wait(60) == 0
    wait_until(lambda: len(board.scalars(run, "loss")) == 60, 30, "the first 60 points")

    second = start_writer(writer, job, 60, 120, 0.05)  # a resumed job: a second file
    wait_until(lambda: len(board.scalars(run, "loss")) >= 80, 30, "points of the second file")
    daemon.signal(signal.SIGKILL)  # in the middle of it
    daemon.process.wait(10)
    assert second.wait(60) == 0
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")

    points = board.wait_scalars(run, "loss", 180, timeout=60)
    assert_steps_and_values(points, list(range(180)), [i / 7 for i in range(180)])
    assert daemon.stop() == 0


def test_a_burst_of_appends_is_mirrored_whole_and_in_order(
    tmp_path: Path, source_name: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    uploads.mkdir()
    source = uploads_source(source_name, uploads, debounce="0.5s", rescan_interval="1h")
    config, tensorboard_url, _ = daemon_config(tmp_path / "tbmirror.yaml", root, [source])
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    daemon.wait_event("watching")

    path = uploads / "events.out.tfevents.1.burst"
    encoder = summaries.ScalarEncoder("x")
    with path.open("wb") as file:  # 3,000 appends over ~2 s, each its own write and event
        file.write(events.frame(summaries.file_version(1.0)))
        file.flush()
        for step in range(3000):
            file.write(events.frame(encoder.encode(1.0 + step, step, step)))
            file.flush()
            time.sleep(0.0005)

    board = TensorBoardReader(tensorboard_url)
    points = board.wait_scalars(source_name, "x", 3000, timeout=60)
    assert [int(p[1]) for p in points] == list(range(3000))
    batches = [e for e in daemon.events() if e.get("event") == "source_synced" and e.get("points")]
    assert batches, "no pass logged the burst"  # (how few reads it takes: a benchmark's job)


def write_tfevents(path: Path, values: list[float], wall_time: float = 1.7e9) -> bytes:
    """A tfevents file: file_version, then scalar `x` at steps 0, 1, ... (returns its bytes)."""
    encoder = summaries.ScalarEncoder("x")
    data = events.frame(summaries.file_version(wall_time)) + b"".join(
        events.frame(encoder.encode(wall_time + step, step, value))
        for step, value in enumerate(values)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


LIGHTNING_CSV = (
    "epoch,step,train_loss,val_loss\n0,0,1.0,\n0,1,0.9,\n0,1,,0.95\n1,2,0.8,\n1,3,0.7,\n1,3,,0.85\n"
)
KERAS_CSV = (
    "epoch,accuracy,loss,val_accuracy,val_loss\n"
    "0,0.5,1.2,0.55,1.1\n"
    "1,0.6,1.0,0.62,0.9\n"
    "2,0.7,0.8,0.66,0.85\n"
)
JSON_LINES = (
    '{"step": 10, "wall_time": 1700000000.5, "loss": 0.5, "lr": 0.001}\n'
    '{"step": 20, "wall_time": 1700000001.5, "loss": 0.4, "phase": "train", "lr": 0.001}\n'
    '{"step": 30, "timestamp": 1700000002500, "loss": 0.3, "eval": {"acc": 0.9}}\n'
)


def test_metric_logs_written_line_by_line_arrive_complete_and_in_order(
    tmp_path: Path, mirror_root: Path, tensorboard: TensorBoard, source_name: str
) -> None:
    uploads = tmp_path / "uploads"
    logs = {
        uploads / "lightning_logs" / "version_0" / "metrics.csv": LIGHTNING_CSV,
        uploads / "keras" / "training.csv": KERAS_CSV,
        uploads / "logs" / "metrics.jsonl": JSON_LINES,
    }
    config = write_config(
        tmp_path / "tbmirror.yaml", mirror_root, [uploads_source(source_name, uploads)]
    )

    def sync() -> None:
        result = tbmirror("sync", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr

    # Line by line, each time stopping in the middle of the next line (a partial last line).
    lightning = tb_run(source_name, "lightning_logs", "version_0", "metrics.csv")
    for path in logs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    longest = max(len(text.splitlines(keepends=True)) for text in logs.values())
    for line in range(longest):
        for path, text in logs.items():
            lines = text.splitlines(keepends=True)
            done = "".join(lines[:line])
            partial = lines[line][: len(lines[line]) // 2] if line < len(lines) else ""
            path.write_text(done + partial)
        sync()
    # After the Lightning file's fourth line (header + 2 rows + half a row) its third row waits.
    for path, text in logs.items():
        path.write_text(text)
    sync()

    assert_steps_and_values(
        tensorboard.wait_scalars(lightning, "train_loss", 4), [0, 1, 2, 3], [1.0, 0.9, 0.8, 0.7]
    )
    assert_steps_and_values(
        tensorboard.wait_scalars(lightning, "val_loss", 2), [1, 3], [0.95, 0.85]
    )
    keras = tb_run(source_name, "keras", "training.csv")
    for tag, values in {
        "accuracy": [0.5, 0.6, 0.7],
        "loss": [1.2, 1.0, 0.8],
        "val_accuracy": [0.55, 0.62, 0.66],
        "val_loss": [1.1, 0.9, 0.85],
    }.items():
        assert_steps_and_values(tensorboard.wait_scalars(keras, tag, 3), [0, 1, 2], values)
    assert "epoch" not in tensorboard.scalar_tags(keras)  # the step column
    jsonl = tb_run(source_name, "logs", "metrics.jsonl")
    loss = tensorboard.wait_scalars(jsonl, "loss", 3)
    assert_steps_and_values(loss, [10, 20, 30], [0.5, 0.4, 0.3])
    assert [p[0] for p in loss] == pytest.approx([1700000000.5, 1700000001.5, 1700000002.5])
    assert_steps_and_values(tensorboard.wait_scalars(jsonl, "eval/acc", 1), [30], [0.9])
    assert_steps_and_values(tensorboard.wait_scalars(jsonl, "lr", 2), [10, 20], [0.001, 0.001])
    assert sorted(tensorboard.scalar_tags(jsonl)) == ["eval/acc", "loss", "lr"]


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_rewritten_corrupt_hostile_and_empty_files(tmp_path: Path, source_name: str) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    outside = tmp_path / "outside"
    write_tfevents(outside / "events.out.tfevents.9.secret", [42.0])
    (outside / "secret.csv").write_text("step,x\n0,1\n")
    uploads.mkdir()
    (uploads / "linked-dir").symlink_to(outside, target_is_directory=True)
    (uploads / "linked.csv").symlink_to(outside / "secret.csv")
    (uploads / "empty").mkdir()
    (uploads / "empty" / "events.out.tfevents.0.empty").write_bytes(b"")
    write_tfevents(uploads / "big" / "events.out.tfevents.1.big", [0.0] * 500)
    write_tfevents(uploads / "fine" / "events.out.tfevents.1.fine", [1.0, 2.0, 3.0])
    rewritten = uploads / "rewrite" / "events.out.tfevents.1.host"
    write_tfevents(rewritten, [float(i) for i in range(10)])
    corrupt = uploads / "corrupt" / "events.out.tfevents.1.host"
    good = write_tfevents(corrupt, [float(i) for i in range(10)])
    record_ends = [r.end for r in events.iter_records(good)]
    damaged = bytearray(good)
    damaged[record_ends[5] + 14] ^= 0xFF  # inside the payload of the seventh record
    corrupt.write_bytes(bytes(damaged))

    config = write_config(
        tmp_path / "tbmirror.yaml",
        root,
        [uploads_source(source_name, uploads, max_file_size=4096)],
    )

    def sync() -> str:
        """A sync: it fails (exit 1) on the corrupt file alone, every time (issue 28: health and
        sync say that a file stopped at a corrupt record)."""
        result = tbmirror("sync", "--config", str(config))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "1 file failed: corrupt/events.out.tfevents.1.host" in output, output
        return output

    first = sync()
    mirrored = root / source_name
    # A corrupt record stops its file at the last good record, with one warning.
    copies = list((mirrored / "corrupt").iterdir())
    assert [c.read_bytes() for c in copies] == [good[: record_ends[5]]]
    assert first.count("corrupt_record_file_stopped") == 1
    # A symlink out of the tree is never followed; too large and empty files are not mirrored.
    assert first.count("symlink leads out of the upload directory") == 2
    assert "larger than max_file_size" in first
    assert not (mirrored / "linked-dir").exists() and not (mirrored / "linked.csv").exists()
    assert not (mirrored / "big").exists() and not (mirrored / "empty").exists()
    fine = (mirrored / "fine" / "events.out.tfevents.1.fine").read_bytes()
    assert fine == (uploads / "fine" / "events.out.tfevents.1.fine").read_bytes()

    # Truncated, then rewritten with other values: mirrored again, under a new name.
    fresh = write_tfevents(rewritten, [100.0 + i for i in range(5)], wall_time=1.8e9)
    with corrupt.open("ab") as file:  # growth after the corrupt record changes nothing
        file.write(events.frame(summaries.ScalarEncoder("x").encode(1.7e9, 99, 99.0)))
    second = sync()
    assert "corrupt_record_file_stopped" not in second
    assert [c.read_bytes() for c in (mirrored / "corrupt").iterdir()] == [good[: record_ends[5]]]
    copies = list((mirrored / "rewrite").iterdir())
    assert [c.name for c in copies] == ["events.out.tfevents.1.host.1"]
    assert copies[0].read_bytes() == fresh

    # Replaced (a new file renamed over it, longer than before): mirrored again too.
    replacement = rewritten.with_name("tmp")
    replaced = write_tfevents(replacement, [200.0 + i for i in range(12)], wall_time=1.9e9)
    replacement.rename(rewritten)
    assert "replaced" in sync()
    copies = list((mirrored / "rewrite").iterdir())
    assert [c.name for c in copies] == ["events.out.tfevents.1.host.2"]
    assert copies[0].read_bytes() == replaced
    assert (mirrored / "fine" / "events.out.tfevents.1.fine").read_bytes() == fine

    # The same bytes under a new inode (a remount renumbers them): still the same file.
    original = uploads / "fine" / "events.out.tfevents.1.fine"
    shutil.copy(original, original.with_name("copy"))
    original.with_name("copy").rename(original)
    third = sync()
    assert "restarted" not in third and "0 written" in third
    assert [c.name for c in (mirrored / "fine").iterdir()] == [original.name]

    board = TensorBoard(root, tmp_path / "tensorboard.log")
    try:
        assert_steps_and_values(
            board.wait_scalars(tb_run(source_name, "rewrite"), "x", 12),
            list(range(12)),
            [200.0 + i for i in range(12)],
        )
        assert_steps_and_values(
            board.wait_scalars(tb_run(source_name, "corrupt"), "x", 5),
            list(range(5)),
            [0, 1, 2, 3, 4],
        )
        assert_steps_and_values(
            board.wait_scalars(tb_run(source_name, "fine"), "x", 3), [0, 1, 2], [1, 2, 3]
        )
    finally:
        board.stop()


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_an_unreadable_file_is_reported_and_the_others_go_on() -> None:
    """Run without the right to read what permissions forbid (root drops its DAC capabilities)."""
    base = Path(tempfile.mkdtemp(prefix="tbmirror-unreadable-"))
    try:
        uploads, root = base / "uploads", base / "mirror"
        write_tfevents(uploads / "a" / "events.out.tfevents.1.a", [1.0])
        write_tfevents(uploads / "b" / "events.out.tfevents.1.b", [2.0])
        config = write_config(base / "tbmirror.yaml", root, [uploads_source("perm", uploads)])
        command = [sys.executable, "-m", "tbmirror", "sync", "--config", str(config)]
        if os.geteuid() == 0:  # root without the capabilities that skip permission checks
            # (not another user: the checkout may sit in a directory only root can enter)
            drop = "-dac_override,-dac_read_search"
            command = ["setpriv", f"--bounding-set={drop}", *command]
        (uploads / "a" / "events.out.tfevents.1.a").chmod(0)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 file failed: a/events.out.tfevents.1.a" in result.stdout
        assert "Permission denied" in result.stderr
        assert (root / "perm" / "b" / "events.out.tfevents.1.b").exists()
        assert not (root / "perm" / "a").exists()
    finally:
        shutil.rmtree(base)


def test_a_late_upload_directory_and_a_reload_keep_the_watch_going(
    tmp_path: Path, source_name: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    path = tmp_path / "tbmirror.yaml"
    source = uploads_source(source_name, uploads, rescan_interval="1s", debounce="0.1s")
    config, tensorboard_url, health_url = daemon_config(path, root, [source])
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    failed = daemon.wait_event("source_failed", source=source_name)
    assert "does not exist" in failed["error"]

    events_file = uploads / "job" / "events.out.tfevents.1.job"
    write_tfevents(events_file, [0.0, 1.0])  # the directory appears: the next rescan sees it
    board = TensorBoardReader(tensorboard_url)
    run = tb_run(source_name, "job")
    board.wait_scalars(run, "x", 2, timeout=60)
    daemon.wait_event("watching", source=source_name)

    def watches() -> int:
        return sum(e.get("event") == "watching" for e in daemon.events())

    shutil.rmtree(uploads)  # the watch ends with the directory; the next rescan watches anew
    write_tfevents(events_file, [0.0, 1.0])
    wait_until(lambda: watches() == 2, 30, "a watch of the new directory")

    path.write_text(path.read_text().replace("rescan_interval: 1s", "rescan_interval: 1h"))
    daemon.signal(signal.SIGHUP)  # a changed source: its old watcher stops, a new one starts
    daemon.wait_event("reloaded")
    wait_until(lambda: watches() == 3, 30, "a watch after the reload")
    encoder = summaries.ScalarEncoder("x")
    with events_file.open("ab") as file:  # seen by the new watcher, long before a rescan
        file.write(b"".join(events.frame(encoder.encode(1.8e9, s, s)) for s in range(2, 5)))
    assert_steps_and_values(board.wait_scalars(run, "x", 5), list(range(5)), list(range(5)))
    wait_until(lambda: httpx.get(f"{health_url}/healthz").status_code == 200, 30, "healthy")
    assert daemon.stop() == 0


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_check_describes_an_upload_directory(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    write_tfevents(uploads / "a" / "events.out.tfevents.1.a", [1.0])
    (uploads / "a" / "metrics.csv").write_text("step,x\n0,1\n")
    (uploads / "a" / ".metrics.csv.partial").write_text("step,x\n")  # excluded: hidden
    (uploads / "a" / "notes.txt").write_text("not a log")
    sources = [
        uploads_source("here", uploads, observer="polling"),
        uploads_source("gone", tmp_path / "missing"),
    ]
    config = write_config(tmp_path / "tbmirror.yaml", tmp_path / "mirror", sources)
    result = tbmirror("check", "--config", str(config))
    assert result.returncode == 1
    assert f"ok    here: {uploads} (polling observer): 1 csv, 1 tfevents" in result.stdout
    assert f"FAIL  gone: upload directory {tmp_path / 'missing'} does not exist" in result.stdout


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_odd_names_collisions_huge_records_and_bytes_that_arrive_late(
    tmp_path: Path, source_name: str
) -> None:
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    # A file name that is not UTF-8 next to a good one: both mirrored.
    (uploads / "a").mkdir(parents=True)
    (uploads / "a" / "good.csv").write_text("step,x\n0,1\n")
    os.mkdir(os.fsencode(uploads / "b"))
    with open(os.fsencode(uploads / "b") + b"/\xff.csv", "wb") as file:
        file.write(b"step,x\n0,2\n")
    # Two job directories whose names differ only past 120 bytes: two run directories.
    long = "resnet50_" + "lr0.001_" * 20
    write_tfevents(uploads / f"{long}seed1" / "events.out.tfevents.1.s1", [1.0])
    write_tfevents(uploads / f"{long}seed2" / "events.out.tfevents.1.s2", [2.0])
    # A symlink to a directory inside the tree: mirrored once, under its real path.
    write_tfevents(uploads / "real" / "events.out.tfevents.1.real", [3.0])
    (uploads / "alias").symlink_to(uploads / "real", target_is_directory=True)
    # A record larger than the 16 MiB read window, between two small ones.
    huge = uploads / "huge" / "events.out.tfevents.1.huge"
    encoder = summaries.ScalarEncoder("x")
    huge.parent.mkdir()
    huge.write_bytes(
        events.frame(encoder.encode(1.0, 0, 0.0))
        + events.frame(summaries.text("notes", "y" * (17 * 2**20), 1.0, 0))
        + events.frame(encoder.encode(2.0, 1, 1.0))
    )
    # Bytes a network share shows as zeros first: the file waits, then goes on.
    late = uploads / "late" / "events.out.tfevents.1.late"
    data = write_tfevents(late, [0.0, 1.0])
    tail = b"".join(events.frame(encoder.encode(9.0 + s, s, s)) for s in range(2, 5))
    late.write_bytes(data + bytes(len(tail)))
    config = write_config(tmp_path / "tbmirror.yaml", root, [uploads_source(source_name, uploads)])

    def sync() -> str:
        """A sync: it fails (exit 1) on the corrupt file alone, every time (issue 28: health and
        sync say that a file stopped at a corrupt record)."""
        result = tbmirror("sync", "--config", str(config))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "1 file failed: corrupt/events.out.tfevents.1.host" in output, output
        return output

    output = sync()
    mirrored = root / source_name
    assert (mirrored / "a" / "good.csv").is_dir() and (mirrored / "b" / "_.csv").is_dir()
    long_dirs = sorted(p for p in mirrored.iterdir() if p.name.startswith("resnet50_"))
    assert len(long_dirs) == 2 and all(len(list(d.iterdir())) == 1 for d in long_dirs)
    assert (mirrored / "real").is_dir() and not (mirrored / "alias").exists()
    assert "symlink" not in output  # one inside the tree is not a problem worth a warning
    assert (mirrored / "huge" / huge.name).read_bytes() == huge.read_bytes()
    assert (mirrored / "late" / late.name).read_bytes() == data
    assert output.count("corrupt_record_file_stopped") == 1

    late.write_bytes(data + tail)  # the bytes arrive
    output = sync()
    assert "corrupt_record_resolved" in output
    assert (mirrored / "late" / late.name).read_bytes() == data + tail


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_sigkill_at_each_protocol_step_copies_and_converts_exactly_once(
    tmp_path: Path, source_name: str
) -> None:
    """`tbmirror sync` over growing uploads is killed again and again at exact steps of the
    journal's protocol (helpers/kills.py), then allowed to finish: each kill before a commit is
    cut back by the next start, every copy equals its source byte for byte, every converted line
    is there once."""
    rng = random.Random(4321)
    uploads, root = tmp_path / "uploads", tmp_path / "mirror"
    files = [uploads / f"job{i}" / f"events.out.tfevents.1.job{i}" for i in range(8)]
    logs = [uploads / f"csv{i}" / "metrics.csv" for i in range(4)]
    lines = {path: 0 for path in logs}
    encoder = summaries.ScalarEncoder("x")

    def grow() -> None:  # every file gets longer, tfevents ones by whole records
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            with path.open("ab") as file:
                if new:
                    file.write(events.frame(summaries.file_version(1.0)))
                start = rng.randrange(10**6)
                file.write(b"".join(
                    events.frame(encoder.encode(1.0 + s, s, s)) for s in range(start, start + 8000)
                ))  # fmt: skip
        for path in logs:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as file:
                if lines[path] == 0:
                    file.write("step,loss,acc\n")
                file.writelines(
                    f"{s},{s / 3},{s % 7}\n" for s in range(lines[path], lines[path] + 4000)
                )
            lines[path] += 4000

    config = write_config(tmp_path / "tbmirror.yaml", root, [uploads_source(source_name, uploads)])
    command = [sys.executable, "-m", "tbmirror", "sync", "--config", str(config)]

    kills = [BATCH_STEPS[i % len(BATCH_STEPS)] for i in range(6)]
    for index, step in enumerate(kills):
        grow()
        kill_at_step(command, step, tmp_path / f"sync-{index}.log")
    final = subprocess.run(command, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    recoveries = [recovered_events((tmp_path / f"sync-{i}.log").read_text()) for i in range(1, 6)]
    found = [
        (step, [files_cut(e) for e in events])
        for step, events in zip(kills, [*recoveries, recovered_events(final.stderr)], strict=True)
    ]
    for step, cut in found:  # cut back after an append or its fsync; nothing after a commit
        assert len(cut) == 1 and (cut[0] >= 1) == (step != "batch_committed"), found

    for path in files:
        copies = list((root / source_name / path.parent.name).iterdir())
        assert [c.name for c in copies] == [path.name]
        assert copies[0].read_bytes() == path.read_bytes()
    for path in logs:
        [converted] = list((root / source_name / path.parent.name / "metrics.csv").iterdir())
        seen: dict[str, list[int]] = {"loss": [], "acc": []}
        for record in events.iter_records(converted.read_bytes()):
            event = Event.FromString(record.payload)
            for value in event.summary.value:
                seen[value.tag].append(event.step)
        assert seen == {"loss": list(range(lines[path])), "acc": list(range(lines[path]))}
