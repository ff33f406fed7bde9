"""A full disk under a running daemon: its mirror root and state store sit on a small tmpfs that
fills up while MLflow runs and an upload directory keep growing; then the space comes back. With
no restart, TensorBoard shows every point, the files hold each point once, no whole record a
reader could have read was ever replaced, and /healthz reported the failures meanwhile and is
healthy again."""

from __future__ import annotations

import ctypes
import errno
import math
import os
import re
import select
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import httpx
import numpy as np
import pytest
from mlflow.entities import Metric
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from conftest import (
    DaemonProcess,
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    mlflow_source,
    new_run,
    tb_run,
    wait_until,
)

SMALL, LARGE = "8m", "256m"  # the tmpfs before and after the space comes back
TICK = 0.1  # seconds between two points of every series
TAG_EVERY = 10  # ticks between two tag changes (new run-info text records)
FULL_SECONDS = 12  # how long the disk stays full while the workload goes on, at least
# ... and until the daemon has met the full disk: a file's last page on tmpfs still takes its own
# appends when no page is free, so on a slow host the first ENOSPC can come later (a deadline)
FULL_DEADLINE = 120
AFTER_SECONDS = 4  # how long the workload goes on once the space is back
HEAL_TIMEOUT = 90  # for every point to be visible in TensorBoard afterwards
KEYS = ("loss", "acc")
RUN_NAMES = ("r0", "r1", "r2")
RUN_INFO = "mlflow (run info)"
NO_SPACE = re.compile(r"No space left on device|ENOSPC|Errno 28|disk is full", re.IGNORECASE)
DEAD_FILE = re.compile(r"BadLengthCrc|ChecksumError|ReadRecordError|InvalidRecord|\bdead\b")
_MASK_DELTA = 0xA282EAD8
_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE, _IN_Q_OVERFLOW, _IN_ISDIR = 0x2, 0x80, 0x100, 0x4000, 1 << 30
_INOTIFY_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

Series = dict[int, float]  # step -> value


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SMALL bytes at tmp_path/disk, unmounted (lazily if still busy) afterwards.

    Request it before `start_daemon`, so that the daemon and its TensorBoard are stopped first.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tbmirror-test", str(mount))
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr}"
    try:
        yield mount
    finally:
        if _run("umount", str(mount)).returncode != 0:
            lazy = _run("umount", "-l", str(mount))
            assert lazy.returncode == 0, f"cannot unmount {mount}: {lazy.stderr}"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def fill(directory: Path) -> int:
    """Write filler files in `directory` until not one more byte fits; returns bytes written."""
    written = 0
    for name, chunk in (("filler", 1 << 20), ("filler-4k", 4096), ("filler-1", 1)):
        with (directory / name).open("wb", buffering=0) as file:
            try:
                while True:
                    written += file.write(b"\0" * chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    assert os.statvfs(directory).f_bavail == 0, "the tmpfs still has free blocks"
    return written


def masked_crc(data: bytes) -> int:
    """CRC32C of `data`, masked as TFRecord does."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(event: Event) -> bytes:
    """One TFRecord holding `event`."""
    payload = event.SerializeToString()
    header = struct.pack("<Q", len(payload))
    return b"".join(
        (
            header,
            struct.pack("<I", masked_crc(header)),
            payload,
            struct.pack("<I", masked_crc(payload)),
        )
    )


def parse_records(data: bytes) -> tuple[list[bytes], int, str | None]:
    """The payloads of the whole records at the start of `data`, the offset where they end, and
    what stops the walk short of the end of `data` (a torn record, a bad CRC), if anything."""
    offset = 0
    payloads: list[bytes] = []
    while offset < len(data):
        if len(data) - offset < 12:
            return payloads, offset, f"torn record header at byte {offset} of {len(data)}"
        length, length_crc = struct.unpack_from("<QI", data, offset)
        if masked_crc(data[offset : offset + 8]) != length_crc:
            return payloads, offset, f"bad length CRC at byte {offset} of {len(data)}"
        end = offset + 12 + length + 4
        if end > len(data):
            return payloads, offset, f"torn record at byte {offset} of {len(data)}"
        payload = data[offset + 12 : end - 4]
        if masked_crc(payload) != struct.unpack_from("<I", data, end - 4)[0]:
            return payloads, offset, f"bad data CRC at byte {offset} of {len(data)}"
        payloads.append(payload)
        offset = end
    return payloads, offset, None


def count_records(root: Path, source: str) -> tuple[Counter[tuple[str, str, int]], list[str]]:
    """(TensorBoard run, tag, step) -> how many records of the source's events files hold it,
    and the damage found in those files."""
    counts: Counter[tuple[str, str, int]] = Counter()
    damage = []
    for path in sorted((root / source).rglob("*tfevents*")):
        if not path.is_file():
            continue
        payloads, _, problem = parse_records(path.read_bytes())
        if problem:
            damage.append(f"{path.relative_to(root)}: {problem}")
        run = path.parent.relative_to(root).as_posix()
        for event in map(Event.FromString, payloads):
            for value in event.summary.value:
                counts[(run, value.tag, event.step)] += 1
    return counts, damage


def steps_text(steps: list[int], limit: int = 8) -> str:
    """Steps as ranges, e.g. `0-4, 7, 9-12`."""
    ranges: list[list[int]] = []
    for step in sorted(steps):
        if ranges and step == ranges[-1][1] + 1:
            ranges[-1][1] = step
        else:
            ranges.append([step, step])
    parts = [f"{a}-{b}" if a != b else str(a) for a, b in ranges]
    return ", ".join(parts[:limit]) + (f", ... ({len(steps)} steps)" if len(parts) > limit else "")


def shown_wrongly(board: TensorBoardReader, expected: dict[tuple[str, str], Series]) -> list[str]:
    """One line per series that TensorBoard does not show exactly as expected (yet)."""
    problems = []
    for (run, tag), truth in expected.items():
        shown = {int(step): value for _, step, value in board.scalars(run, tag)}
        missing = sorted(truth.keys() - shown.keys())
        unexpected = sorted(shown.keys() - truth.keys())
        wrong = sorted(
            step
            for step in truth.keys() & shown.keys()
            if not math.isclose(shown[step], float(np.float32(truth[step])), rel_tol=1e-6)
        )
        if missing or unexpected or wrong:
            problems.append(
                f"{run}/{tag}: {len(shown)} of {len(truth)} points shown; missing "
                f"[{steps_text(missing)}], unexpected [{steps_text(unexpected)}], "
                f"wrong values at [{steps_text(wrong)}]"
            )
    return problems


def counted_wrongly(
    counts: Counter[tuple[str, str, int]], expected: dict[tuple[str, str], Series]
) -> list[str]:
    """One line per series whose points are not in the files exactly once each."""
    problems = []
    for (run, tag), truth in expected.items():
        found = {step: n for (r, t, step), n in counts.items() if (r, t) == (run, tag)}
        missing = sorted(truth.keys() - found.keys())
        twice = sorted(step for step, n in found.items() if n > 1)
        unexpected = sorted(found.keys() - truth.keys())
        if missing or twice or unexpected:
            problems.append(
                f"{run}/{tag} in the files: missing [{steps_text(missing)}], more than once "
                f"[{steps_text(twice)}] (up to {max(found.values(), default=0)} times), "
                f"unexpected [{steps_text(unexpected)}]"
            )
    return problems


def health(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{url}/healthz", timeout=5)
    return response.status_code, response.json()


class ReaderView:
    """What a reader of the mirror (TensorBoard's loader) may have read: every prefix of whole
    records of every events file, read as soon as inotify says the file changed (from a thread).
    Invariant 7: such bytes are never replaced. Torn and corrupt tails are left out, since a
    reader may meet a record half written."""

    def __init__(self, top: Path, root: Path) -> None:
        self.top, self.root = top, root  # everything below `top` is watched
        self.seen: dict[Path, dict[int, bytes]] = {}  # path -> {end of whole records: them}
        self.changed: dict[Path, str] = {}  # per file, the first change of whole records seen
        self.looks = 0  # reads of a changed events file
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        self._directories: dict[int, Path] = {}  # watch descriptor -> directory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reader-view", daemon=True)

    def start(self) -> ReaderView:
        self._watch(self.top)
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(30)
            os.close(self._fd)

    def _watch(self, directory: Path) -> None:
        """Watch `directory` and the directories below it; look at the events files in them."""
        mask = ctypes.c_uint32(_IN_MODIFY | _IN_CREATE | _IN_MOVED_TO)
        watch = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), mask)
        if watch < 0:
            return  # gone meanwhile
        self._directories[watch] = directory
        try:
            children = list(directory.iterdir())
        except OSError:
            return
        for child in children:
            if child.is_dir():
                self._watch(child)
            elif "tfevents" in child.name:
                self._look(child)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            changed: dict[Path, None] = {}
            offset = 0
            while offset < len(data):
                watch, mask, _, length = _INOTIFY_EVENT.unpack_from(data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask & _IN_Q_OVERFLOW:
                    self._watch(self.top)
                directory = self._directories.get(watch)
                if directory is None or not name:
                    continue
                path = directory / os.fsdecode(name)
                if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                    self._watch(path)
                elif "tfevents" in path.name:
                    changed[path] = None
            for path in changed:
                self._look(path)

    def _look(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:  # gone meanwhile
            return
        self.looks += 1
        _, end, _ = parse_records(data)
        prefixes = self.seen.setdefault(path, {})
        if end in prefixes and prefixes[end] != data[:end] and path not in self.changed:
            self.changed[path] = (
                f"{path.relative_to(self.root)}: {replacement(prefixes[end], data)}"
            )
        prefixes[end] = data[:end]

    def replaced(self) -> list[str]:
        """One line per file whose whole records, once read, were replaced or removed."""
        problems = list(self.changed.values())
        for path, prefixes in sorted(self.seen.items()):
            if path in self.changed:
                continue
            data = path.read_bytes() if path.is_file() else None
            for end, old in sorted(prefixes.items()):
                if data is None:
                    problems.append(f"{path.relative_to(self.root)}: removed after being read")
                    break
                if data[:end] != old:
                    problems.append(f"{path.relative_to(self.root)}: {replacement(old, data)}")
                    break
        return problems


def replacement(old: bytes, new: bytes) -> str:
    """Where `new` stops holding the whole records of `old`, and which record was there."""
    common = min(len(old), len(new))
    offset = next((i for i in range(common) if old[i] != new[i]), common)
    start = 0
    for payload in parse_records(old)[0]:
        end = start + 16 + len(payload)
        if offset < end:
            event = Event.FromString(payload)
            what = ", ".join(v.tag for v in event.summary.value) or event.WhichOneof("what")
            return (
                f"bytes {start}-{len(old)}, whole records a reader read, were replaced: first "
                f"difference at byte {offset}, in a record of {what} at step {event.step}, wall "
                f"time {event.wall_time:.3f}; the file has {len(new)} bytes now"
            )
        start = end
    return f"bytes 0-{len(old)} were replaced"


@pytest.fixture
def reader_view(small_disk: Path) -> Iterator[ReaderView]:
    """A ReaderView of the mirror root `small_disk/mirror`, looking from the start of the test."""
    view = ReaderView(small_disk, small_disk / "mirror").start()
    yield view
    view.stop()


class Workload:
    """Three MLflow runs logging two keys, a growing tfevents file and a growing CSV file: one
    point of every series each TICK s, and a tag change each TAG_EVERY ticks, from a thread."""

    def __init__(self, client: Any, run_ids: list[str], tfevents: Path, csv: Path) -> None:
        self.client, self.run_ids, self.tfevents, self.csv = client, run_ids, tfevents, csv
        self.steps = 0  # points logged per series so far (steps 0 .. steps - 1)
        self.heartbeat = ""  # the last value of tag `heartbeat`
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="workload", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the workload did not stop"
        if self.error is not None:
            raise AssertionError(f"the workload failed: {self.error!r}") from self.error

    def _loop(self) -> None:
        try:
            with self.tfevents.open("ab", buffering=0) as events, self.csv.open("a") as csv:
                events.write(frame(Event(wall_time=time.time(), file_version="brain.Event:2")))
                csv.write("step,loss\n")
                csv.flush()
                while not self._stop.is_set():
                    self._tick(events, csv)
                    self._stop.wait(TICK)
        except BaseException as error:  # reported by stop()
            self.error = error

    def _tick(self, events: Any, csv: Any) -> None:
        step, now = self.steps, time.time()
        for run_id in self.run_ids:
            metrics = [Metric(key, mlflow_value(key, step), int(now * 1000), step) for key in KEYS]
            self.client.log_batch(run_id, metrics=metrics)
        value = Summary.Value(tag="loss", simple_value=step / 7)
        events.write(frame(Event(wall_time=now, step=step, summary=Summary(value=[value]))))
        csv.write(f"{step},{step / 3}\n")
        csv.flush()
        if step % TAG_EVERY == 0:
            heartbeat = f"beat-{step:06d}-{now:.3f}"
            for run_id in self.run_ids:
                self.client.set_tag(run_id, "heartbeat", heartbeat)
            self.heartbeat = heartbeat
        self.steps = step + 1


def mlflow_value(key: str, step: int) -> float:
    return 1 / (1 + step) if key == "loss" else step / (step + 10)


@pytest.mark.parametrize("state_on", ["the-full-disk", "another-disk"])
def test_a_full_disk_heals_without_a_restart_and_loses_nothing(
    state_on: str,
    small_disk: Path,
    reader_view: ReaderView,
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    mlflow_server: MlflowServer,
    source_name: str,
    experiment_name: str,
) -> None:
    """With the state store on the full disk too (as in /var/lib/tbmirror), the first failures
    are the store's; with it elsewhere, the events files' own writes fail."""
    root = reader_view.root
    state = (small_disk if state_on == "the-full-disk" else tmp_path) / "state.db"
    uploads = tmp_path / "uploads"
    (uploads / "job").mkdir(parents=True)
    (uploads / "csv").mkdir()
    tfevents = uploads / "job" / "events.out.tfevents.1700000000.job"
    csv = uploads / "csv" / "metrics.csv"
    client = mlflow_server.client()
    run_ids = [new_run(client, experiment_name, name) for name in RUN_NAMES]
    ml, up = f"{source_name}-mlflow", f"{source_name}-uploads"
    sources = [
        mlflow_source(ml, mlflow_server.url, [experiment_name], poll_interval="1s"),
        {"name": up, "type": "uploads", "path": str(uploads), "observer": "polling",
         "polling_interval": "1s", "rescan_interval": "2s"},
    ]  # fmt: skip
    config, tensorboard_url, health_url = daemon_config(
        tmp_path / "tbmirror.yaml", root, sources,
        mirror={"root": str(root), "state": str(state)}, health={"failure_threshold": 1},
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    board = TensorBoardReader(tensorboard_url)
    mlflow_series = {
        (tb_run(ml, experiment_name, name), key): (run_id, key)
        for name, run_id in zip(RUN_NAMES, run_ids, strict=True)
        for key in KEYS
    }
    tfevents_run, csv_run = tb_run(up, "job"), tb_run(up, "csv", "metrics.csv")
    all_series = [*mlflow_series, (tfevents_run, "loss"), (csv_run, "loss")]
    workload = Workload(client, run_ids, tfevents, csv).start()
    try:
        # (1) Every series is on its way to TensorBoard.
        wait_until(
            lambda: all(board.scalars(run, tag) for run, tag in all_series),
            60,
            "first points of every series in TensorBoard",
        )
        # (2) The disk fills up; the workload goes on; /healthz must say something is wrong.
        filler_bytes = fill(small_disk)
        full_since, steps_when_full = time.monotonic(), workload.steps
        reports: list[tuple[int, dict[str, Any]]] = []
        met_full_disk = False
        while time.monotonic() - full_since < FULL_SECONDS or not met_full_disk:
            assert daemon.process.poll() is None, f"the daemon exited: {daemon.log_path}"
            assert time.monotonic() - full_since < FULL_DEADLINE, (
                f"the daemon met no full disk in {FULL_DEADLINE} s ({workload.steps} steps "
                f"logged): {daemon.log_path}"
            )
            reports.append(health(health_url))
            met_full_disk = met_full_disk or any(NO_SPACE.search(str(e)) for e in daemon.events())
            time.sleep(0.25)
        steps_while_full = workload.steps - steps_when_full
        # (3) The space comes back (a larger tmpfs, and the fillers gone); a little more work.
        remounted = _run("mount", "-o", f"remount,size={LARGE}", str(small_disk))
        assert remounted.returncode == 0, remounted.stderr
        for filler in small_disk.glob("filler*"):
            filler.unlink()
        space_back = time.monotonic()
        time.sleep(AFTER_SECONDS)
    finally:
        workload.stop()

    # The disk really was full, points really were logged meanwhile, and it was noticed.
    assert steps_while_full >= 5, f"only {steps_while_full} points logged while full"
    no_space = [e for e in daemon.events() if NO_SPACE.search(str(e))]
    assert no_space, "the daemon never logged a full-disk error: was the disk full?"

    # (4) The truth: MLflow's own history, and what was written into the upload directory.
    expected: dict[tuple[str, str], Series] = {}
    for series, (run_id, key) in mlflow_series.items():
        history = client.get_metric_history(run_id, key)
        assert len(history) == workload.steps, f"MLflow holds {len(history)} points of {series}"
        expected[series] = {m.step: m.value for m in history}
    expected[(tfevents_run, "loss")] = {s: s / 7 for s in range(workload.steps)}
    expected[(csv_run, "loss")] = {s: s / 3 for s in range(workload.steps)}

    problems: list[str] = []  # what the daemon did wrong, all reported together at the end
    unhealthy = [
        body for code, body in reports
        if code == 503 or not all(s["healthy"] for s in body["sources"].values())
    ]  # fmt: skip
    if not unhealthy:
        problems.append(f"/healthz never reported a failure while full; last: {reports[-1]}")
    still_wrong: list[str] = []

    def all_shown() -> bool:
        assert daemon.process.poll() is None, "the daemon exited"
        still_wrong[:] = shown_wrongly(board, expected)
        return not still_wrong

    try:
        wait_until(all_shown, HEAL_TIMEOUT, "every point in TensorBoard", every=1)
        visible_after = time.monotonic() - space_back
    except AssertionError as error:
        visible_after = math.nan
        problems += [str(error), *still_wrong]
    last_texts = {
        name: (board.text(tb_run(ml, experiment_name, name), RUN_INFO) or [{}])[-1].get("text", "")
        for name in RUN_NAMES
    }
    problems += [
        f"{name}: the last run-info text shown lacks heartbeat {workload.heartbeat}"
        for name, text in last_texts.items()
        if workload.heartbeat not in text
    ]

    # (5) Each point in the mirror's files exactly once, no bytes a reader had read replaced,
    # and the tfevents copy equal to its source.
    reader_view.stop()
    problems += reader_view.replaced()
    counts = Counter[tuple[str, str, int]]()
    for source in (ml, up):
        found, damage = count_records(root, source)
        counts.update(found)
        problems += [f"damaged events file {line}" for line in damage]
    problems += counted_wrongly(counts, expected)
    for name in RUN_NAMES:
        run = tb_run(ml, experiment_name, name)
        info = sorted(step for (r, tag, step), n in counts.items() if (r, tag) == (run, RUN_INFO))
        twice = [step for step in info if counts[(run, RUN_INFO, step)] > 1]
        if twice or info != list(range(len(info))):
            problems.append(f"{run}/{RUN_INFO} steps in the files: {info}, more than once: {twice}")
    copy = root / up / "job" / tfevents.name
    if not copy.is_file() or copy.read_bytes() != tfevents.read_bytes():
        size = copy.stat().st_size if copy.is_file() else None
        problems.append(
            f"{copy} ({size} bytes) differs from {tfevents.stat().st_size} source bytes"
        )

    # (6) Healthy again, the failures counted and logged once per cause, nothing restarted.
    try:
        wait_until(lambda: health(health_url)[0] == 200, 15, "/healthz to answer 200 again")
    except AssertionError as error:
        problems.append(f"{error}: {health(health_url)[1]}")
    metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
    failures_counted = sum(
        float(value)
        for value in re.findall(r"^tbmirror_write_failures_total\{.*\} (\S+)$", metrics, re.M)
    )
    if not failures_counted > 0:
        problems.append("/metrics has no tbmirror_write_failures_total{source,cause} above 0")
    log = daemon.events()
    write_failed = [e for e in log if e.get("event") == "write_failed"]
    per_cause = Counter((e.get("source"), e.get("cause")) for e in write_failed)
    if not write_failed:
        problems.append("no write_failed event in the daemon log")
    problems += [
        f"write_failed logged {n} times for source {source}, cause {cause}"
        for (source, cause), n in per_cause.items()
        if n > 5
    ]
    problems += [
        f"write_failed without {field}: {e}"
        for e in write_failed
        for field in ("source", "path", "cause", "error")
        if field not in e
    ]
    if not any(e.get("event") == "writes_recovered" for e in log):
        problems.append("no writes_recovered event in the daemon log")
    if daemon.process.poll() is not None:
        problems.append(f"the daemon exited with {daemon.process.returncode}")
    if len(daemon.tensorboard_pids()) != 1:
        problems.append(f"TensorBoard was restarted: pids {sorted(daemon.tensorboard_pids())}")
    problems += [
        f"TensorBoard: {e.get('line')}"
        for e in log
        if e.get("event") == "tensorboard_output" and DEAD_FILE.search(str(e.get("line")))
    ]

    source_failed = Counter(e.get("source") for e in log if e.get("event") == "source_failed")
    print(
        f"\nfull disk: {filler_bytes} filler bytes, {space_back - full_since:.0f} s full, "
        f"{steps_while_full} points per series logged meanwhile, {workload.steps} per series in "
        f"all ({len(expected) * workload.steps} points in {len(expected)} series)\n"
        f"/healthz: {len(unhealthy)} of {len(reports)} answers while full reported a failure\n"
        f"log: {len(no_space)} events with a full-disk error, {len(write_failed)} write_failed "
        f"{dict(per_cause)}, source_failed {dict(source_failed)}\n"
        f"every point visible {visible_after:.1f} s after the space came back\n"
        f"reader view: {len(reader_view.seen)} events files, "
        f"{reader_view.looks} reads, {sum(map(len, reader_view.seen.values()))} distinct "
        "whole-record prefixes\n"
        f"write failures counted in /metrics: {failures_counted}"
    )
    assert not problems, "\n".join(problems)
    assert daemon.stop() == 0
