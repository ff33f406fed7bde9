"""Media: the images, figures and tables among an MLflow run's artifacts, as records of the run's
own events file.

- A `log_image(key=, step=)` series (`images/<key>+step+<n>+timestamp+<ms>+<uuid>.png`, "/" in the
  key as "~"; older MLflow: "%" and "#"; `+compressed.webp` previews ignored) becomes image
  summaries on tag `<key>` at the logged step (the step rule of mirror/steps.py), with the logged
  wall time. Each file is written once.
- Any other PNG, JPEG or GIF artifact (`log_figure`, `log_image(artifact_file=)`) is a figure: one
  tag per path, at most `artifacts.max_images` per run, shown again at the next step whenever its
  listed size changes.
- A `log_table` JSON artifact (named in the run's `mlflow.loggedArtifacts` tag) is shown in the text
  dashboard as a Markdown table of its last `artifacts.table_rows` rows, whole again at the next
  step whenever its listed size changes (log_table rewrites the whole file to append).

What was written is committed as media rows (model.MediaRecord) in the batch that appends the
records, so each version is written exactly once. A file too large, corrupt or not a table is
skipped with one warning (a row without a step); a file that fails to download fails its run's
artifacts, which are looked at again later.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from tbmirror import parsers
from tbmirror.engine.mlflow.encoding import append_records, escape_cell
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.mlflow.source import RunSource
from tbmirror.errors import ParseError
from tbmirror.journal import Journal
from tbmirror.mirror import summaries
from tbmirror.mirror.steps import INT64_MAX, next_step
from tbmirror.model import MediaRecord, RunRecord, RunSnapshot
from tbmirror.sources.http import HttpStatusError
from tbmirror.sources.stores import IMAGES_FOLDER, TABLE_IMAGES_FOLDER, Artifact, RunRef

log = structlog.get_logger(__name__)

LOGGED_IMAGES_TAG = "mlflow.loggedImages"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
FIGURE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.gif")
BATCH_BYTES = 16 * 1024**2  # media downloaded and committed per batch (bounds memory)
PER_PASS = 2000  # media of one run downloaded per pass; the rest next pass
TABLE_SUFFIX = " (table)"  # MLflow forbids parentheses in metric keys: no tag collides
IMAGE_SUFFIX = " (image)"  # for an image key that is also one of the run's metric keys

# <key>+step+<n>+timestamp+<ms>+<uuid>.png; "%" and "#" ("/") before MLflow 2.17
_STEP_IMAGE = re.compile(
    r"^(?P<key>[^+%]*)(?P<sep>[+%])step(?P=sep)(?P<step>-?\d{1,19})(?P=sep)"
    r"timestamp(?P=sep)(?P<ms>\d{1,19})(?P=sep)[^+%/]+\.png$"
)


@dataclass(frozen=True)
class LoggedMedia:
    """What a run's tags say about its media: whether it logged image series, and its tables."""

    images: bool
    tables: tuple[str, ...]

    @classmethod
    def of(cls, run: RunSnapshot) -> LoggedMedia | None:
        """From a run listing's tags; None for a run that logged neither. A tag that cannot be
        read names no table (and says so in one line)."""
        images = run.tags.get(LOGGED_IMAGES_TAG, "").lower() == "true"
        try:
            tables = _tables(run.tags.get(LOGGED_ARTIFACTS_TAG))
        except ParseError as error:
            log.warning("media_tag_unreadable", run_id=run.run_id, error=str(error))
            tables = ()
        return cls(images, tables) if images or tables else None


def _tables(tag: str | None) -> tuple[str, ...]:
    """Paths of the tables in a `mlflow.loggedArtifacts` tag value (a JSON list of {path, type});
    a value of another shape names no table; one that is not JSON raises ParseError."""
    entries = parsers.json_value(tag or "[]", f"tag {LOGGED_ARTIFACTS_TAG}")
    if not isinstance(entries, list):
        return ()
    return tuple(
        sorted(
            entry["path"]
            for entry in entries
            if isinstance(entry, dict)
            and entry.get("type") == "table"
            and isinstance(entry.get("path"), str)
        )
    )


@dataclass(frozen=True)
class StepImage:
    key: str
    step: int
    timestamp_ms: int


def parse_step_image(path: str) -> StepImage | None:
    """The series, step and time of a `log_image(key=, step=)` file, or None for anything else
    (previews included)."""
    folder, _, name = path.rpartition("/")
    matched = _STEP_IMAGE.match(name) if folder == IMAGES_FOLDER else None
    if matched is None:
        return None
    key = matched["key"].replace("~" if matched["sep"] == "+" else "#", "/")
    step = int(matched["step"])
    if not -(2**63) <= step <= INT64_MAX:
        return None
    return StepImage(key, step, int(matched["ms"]))


class Unshown(ValueError):
    """A medium that is not shown, and why (too large, not a table, never served)."""


@dataclass(frozen=True)
class _Item:
    """One version of one medium to download and write."""

    artifact: Artifact
    kind: str  # "image", "figure" or "table"
    tag: str
    source_step: int
    wall_time: float | None  # None: the time it is written


class MediaSync:
    """Writes the new media of one source's runs. Not thread-safe (one pass at a time)."""

    def __init__(
        self,
        source: RunSource,
        journal: Journal,
        placement: Placement,
        clock: Callable[[], float],
    ) -> None:
        self.source = source
        self.journal = journal
        self.placement = placement
        self.clock = clock
        self.settings = source.settings.artifacts
        self._warned_limit: set[str] = set()  # runs told they have more than max_images figures
        wanted = self.settings.images or self.settings.tables
        self.enabled = wanted and source.artifact_sizes_listed
        if wanted and not self.enabled:  # a figure rewritten in place could not be told
            log.info(
                "artifact_media_not_mirrored",
                source=source.name,
                store=source.settings.artifacts.store,
                why="its listing gives no sizes",
            )

    def sync(
        self,
        record: RunRecord,
        logged: LoggedMedia | None,
        artifacts: list[Artifact],
        stop: threading.Event | None,
    ) -> tuple[Counter[str], int, bool]:
        """Write the run's new media, at most PER_PASS of them; returns (how many were written
        of each kind: "image", "figure", "table"; bytes written; whether all were). Raises
        SourceError (a download failed) or WriteFault."""
        rows = self.journal.media(self.source.name, record.run_id)
        steps = _last_steps(rows.values())
        due = self._due(record, logged or LoggedMedia(False, ()), artifacts, rows)
        items = due[:PER_PASS]  # one run's thousands of images do not hold up the others
        written: Counter[str] = Counter()
        bytes_written = 0
        run = RunRef(record.run_id, record.experiment_id)
        for group in _groups(items):
            if stop is not None and stop.is_set():
                break
            with ThreadPoolExecutor(self.source.settings.concurrency) as pool:
                downloads = list(pool.map(lambda item: self._download(run, item), group))
            done, size = self._write(record, rows, steps, list(zip(group, downloads, strict=True)))
            written.update(done)
            bytes_written += size
            record = self.placement.records.get(record.run_id, record)
        return written, bytes_written, len(items) == len(due)

    def _due(
        self,
        record: RunRecord,
        logged: LoggedMedia,
        artifacts: list[Artifact],
        rows: dict[str, MediaRecord],
    ) -> list[_Item]:
        """What to download: step images never looked at (in step, time order), then figures and
        tables whose size is not the one last looked at."""
        settings = self.settings
        images: list[tuple[StepImage, Artifact]] = []
        figures: list[Artifact] = []
        tables: list[Artifact] = []
        for artifact in artifacts:
            step_image = parse_step_image(artifact.path)
            if step_image is not None:
                if settings.images and logged.images and artifact.path not in rows:
                    images.append((step_image, artifact))
            elif artifact.path in logged.tables:
                if settings.tables:
                    tables.append(artifact)
            elif (
                settings.images
                and artifact.path.split("/")[0] not in (IMAGES_FOLDER, TABLE_IMAGES_FOLDER)
                and any(fnmatch.fnmatch(artifact.path.lower(), p) for p in FIGURE_PATTERNS)
            ):
                figures.append(artifact)
        if len(figures) > settings.max_images and record.run_id not in self._warned_limit:
            self._warned_limit.add(record.run_id)
            log.warning("run_images_limited", source=self.source.name, run_id=record.run_id,
                        images=len(figures), shown=settings.max_images)  # fmt: skip
        metric_keys = set(self.journal.cursors(self.source.name, record.run_id))
        tags = _image_tags(rows.values(), metric_keys)
        images.sort(key=lambda found: (found[0].step, found[0].timestamp_ms, found[1].path))
        items = [
            _Item(artifact, "image", tags(image.key), image.step, image.timestamp_ms / 1000)
            for image, artifact in images
        ]
        for artifact, kind, tag in [
            *((a, "figure", a.path) for a in figures[: settings.max_images]),
            *((a, "table", a.path + TABLE_SUFFIX) for a in tables),
        ]:
            last = rows.get(artifact.path)
            if last is None or last.size != artifact.size:
                items.append(_Item(artifact, kind, summaries.clean_tag(tag), 0, None))
        return items

    def _download(self, run: RunRef, item: _Item) -> bytes | Unshown:
        """The item's bytes, or why it is not shown. Raises SourceError."""
        limit = self.settings.max_media_size
        if (item.artifact.size or 0) > limit:
            return Unshown(f"larger than artifacts.max_media_size ({limit} bytes)")
        if item.kind == "table" and not item.artifact.path.lower().endswith(".json"):
            return Unshown("not a JSON table (Parquet tables are not shown)")
        try:
            return self.source.artifact_bytes(run, item.artifact)
        except HttpStatusError as error:
            if error.error_code == "INVALID_PARAMETER_VALUE":  # never served (MLflow: "#")
                return Unshown(f"the server refuses to serve it: {error}")
            raise

    def _write(
        self,
        record: RunRecord,
        rows: dict[str, MediaRecord],
        steps: dict[str, int],
        downloads: list[tuple[_Item, bytes | Unshown]],
    ) -> tuple[Counter[str], int]:
        """Encode downloaded media and commit them with their rows in one batch (updating `rows`
        and `steps`, the last step of each tag); returns (media written of each kind, bytes
        written)."""
        now = self.clock()
        payloads: list[bytes] = []
        kinds: Counter[str] = Counter()
        new_rows: list[MediaRecord] = []
        for item, data in downloads:
            last = rows.get(item.artifact.path)
            step = next_step(item.source_step, steps.get(item.tag))
            try:
                if isinstance(data, Unshown):
                    raise data
                if step > INT64_MAX:
                    raise ValueError("no TensorBoard step left after the series' last")
                wall_time = item.wall_time if item.wall_time is not None else now
                if item.kind == "table":
                    markdown = markdown_table(data, self.settings.table_rows)
                    payloads.append(summaries.text(item.tag, markdown, wall_time, step))
                else:
                    payloads.append(summaries.image(item.tag, data, wall_time, step))
                steps[item.tag] = step
                kinds[item.kind] += 1
                written_at: int | None = step
                skipped = False
            except (ValueError, ParseError) as error:  # this medium only (BadImageError too)
                log.warning("artifact_skipped", source=self.source.name, run_id=record.run_id,
                            path=item.artifact.path, reason=str(error))  # fmt: skip
                written_at, skipped = (last.step if last else None), True
            row = MediaRecord(self.source.name, record.run_id, item.artifact.path, item.kind,
                              item.tag, item.artifact.size or 0, written_at, skipped)  # fmt: skip
            rows[row.path] = row
            new_rows.append(row)
        with self.journal.batch(self.source.name) as batch:
            updated = append_records(batch, record, payloads, now)
            batch.put_media(new_rows)
            if updated is not record:
                batch.put_run(updated)
            bytes_written = batch.bytes_written
        if updated is not record:
            self.placement.committed([updated])
        return kinds, bytes_written


def _image_tags(rows: Iterable[MediaRecord], metric_keys: set[str]) -> Callable[[str], str]:
    """The tag of each image series: its key, or `<key> (image)` if the run has a metric of that
    name (TensorBoard keeps one kind of data per tag); a series keeps the tag it started with."""
    started = {row.tag for row in rows if row.kind == "image"}

    def tag(key: str) -> str:
        for candidate in (key, key + IMAGE_SUFFIX):
            if summaries.clean_tag(candidate) in started:
                return summaries.clean_tag(candidate)
        return summaries.clean_tag(key + IMAGE_SUFFIX if key in metric_keys else key)

    return tag


def _last_steps(rows: Iterable[MediaRecord]) -> dict[str, int]:
    """The last step written on each media tag."""
    steps: dict[str, int] = {}
    for row in rows:
        if row.step is not None:
            steps[row.tag] = max(row.step, steps.get(row.tag, row.step))
    return steps


def _groups(items: list[_Item]) -> Iterator[list[_Item]]:
    """Items in groups of at most BATCH_BYTES (at least one item each), in order."""
    group: list[_Item] = []
    size = 0
    for item in items:
        if group and size + (item.artifact.size or 0) > BATCH_BYTES:
            yield group
            group, size = [], 0
        group.append(item)
        size += item.artifact.size or 0
    if group:
        yield group


def markdown_table(data: bytes, max_rows: int) -> str:
    """A `log_table` JSON file (pandas "split" orientation: columns, data) as a Markdown table of
    its last `max_rows` rows. Raises ParseError if it is not such a table."""
    table = parsers.json_value(data, "the table")
    columns = table.get("columns") if isinstance(table, dict) else None
    rows = table.get("data") if isinstance(table, dict) else None
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ParseError('not a table: expected {"columns": [...], "data": [[...], ...]}')
    if not all(isinstance(row, list) for row in rows):
        raise ParseError("not a table: a row that is not a list")
    shown = rows[-max_rows:]
    lines = [
        "| " + " | ".join(_cell(column) for column in columns) + " |",
        "|" + " --- |" * len(columns),
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in shown),
    ]
    if len(shown) < len(rows):
        lines += ["", f"*The last {len(shown):,} of {len(rows):,} rows.*"]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return escape_cell(text[: summaries.MAX_TAG_BYTES])
