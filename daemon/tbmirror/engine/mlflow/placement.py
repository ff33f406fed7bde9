"""Placement: where each run of one MLflow source lives in the mirror, and nothing else.

The single owner of the source's run records and directories. What it holds is the journal's
store as last read, plus what was committed since (`committed`); after a failed pass it is read
again (`invalidate`). Directories: `<source>/<experiment>/<run>`, a child run nested in its
parent's directory; a name taken by another run gets `-<run id[:8]>` (then the whole id).
Renames move directories through the journal; deletions remove a run's own files (nested child
runs stay). A run that leaves the selection goes, with its children, to the archive when one is
configured (`.archive/<its dir>`, kept with all its rows: it comes back by a move, nothing fetched
again), else it is removed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import structlog

from tbmirror.errors import TbmirrorError
from tbmirror.journal import Journal
from tbmirror.mirror import layout
from tbmirror.model import Experiment, RunRecord, RunSnapshot
from tbmirror.sources.stores import Artifact

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Placed:
    record: RunRecord
    parent_run_id: str | None
    moved: bool


class Placement:
    """Run records and directories of one source. Not thread-safe (one pass at a time), except
    `runs_mirrored`."""

    def __init__(self, source: str, journal: Journal) -> None:
        self.source = source
        self.journal = journal
        self.records: dict[str, RunRecord] = {}  # runs in the root
        self.archived: dict[str, RunRecord] = {}  # runs in the archive
        self._new_dirs: set[str] = set()  # directories of runs placed, not in the store yet
        self._loaded = False

    @property
    def runs_mirrored(self) -> int:
        return len(self.records)

    def load(self) -> None:
        """Read the records from the store unless what is held is current."""
        if not self._loaded:
            records = self.journal.runs(self.source)
            self.records = {i: r for i, r in records.items() if not layout.is_archived(r.dir)}
            self.archived = {i: r for i, r in records.items() if layout.is_archived(r.dir)}
            self._new_dirs = set()
            self._loaded = True

    def invalidate(self) -> None:
        """What is held may differ from the store (a pass failed half-way): read it again."""
        self._loaded = False

    def committed(self, records: list[RunRecord]) -> None:
        """Take records just committed by a batch."""
        for record in records:
            self.records[record.run_id] = record
            self._new_dirs.discard(record.dir)

    # -- experiments --------------------------------------------------------------------------

    def place_experiments(self, experiments: dict[str, Experiment]) -> dict[str, str]:
        """experiment id -> relative dir, moving directories of renamed experiments."""
        known = self.journal.experiment_dirs(self.source)
        taken = {dir for _, dir in known.values()}
        placed: dict[str, str] = {}
        for experiment_id, experiment in sorted(experiments.items()):
            old = known.get(experiment_id)
            if old and old[0] == experiment.name:
                placed[experiment_id] = old[1]
                continue
            wanted = layout.sanitize_component(experiment.name or experiment_id)
            dir = layout.join(self.source, wanted)
            if dir in taken:
                dir = layout.join(self.source, layout.disambiguate(wanted, experiment_id, 64))
            if old:
                self._move(old[1], dir)
                taken.discard(old[1])
            with self.journal.batch(self.source) as batch:
                batch.put_experiment(self.source, experiment_id, experiment.name, dir)
            taken.add(dir)
            placed[experiment_id] = dir
        return placed

    # -- runs ---------------------------------------------------------------------------------

    def place(self, run: RunSnapshot, experiment_dirs: dict[str, str]) -> Placed | None:
        """The run's record, placed (new, or moved after a rename or a new parent); None if it
        has no place (a child in another experiment whose parent is not mirrored). Raises for
        this run only."""
        record = self.records.get(run.run_id) or self._restore(run.run_id)
        parent = self.records.get(run.parent_run_id or "")
        if parent is not None and parent.run_id != run.run_id:
            parent_dir = parent.dir
        elif run.experiment_id in experiment_dirs:
            parent_dir = experiment_dirs[run.experiment_id]
        else:
            return None
        dir = self._run_dir(run, parent_dir, record)
        moved = False
        if record is None:
            experiment_id = sys.intern(run.experiment_id)  # (shared by its experiment's runs)
            record = RunRecord(self.source, run.run_id, experiment_id, None, dir, run.name, "")
            self.records[run.run_id] = record
            self._new_dirs.add(dir)
        elif record.dir != dir:
            self._move(record.dir, dir)
            moved = True
            log.info("run_moved", source=self.source, run_id=record.run_id, dir=dir)
        return Placed(record, parent.run_id if parent else None, moved)

    def _restore(self, run_id: str) -> RunRecord | None:
        """An archived run, taken back with its children (placing it moves it into the root).
        With no archive configured any more, its rows are forgotten instead (its files there are
        out of reach) and it is mirrored anew: None."""
        record = self.archived.get(run_id)
        if record is None:
            return None
        tree = [r for r in self.archived.values() if layout.within(r.dir, record.dir)]
        if self.journal.layout.archive is None:
            self._forget(tree)
            log.warning("archived_run_mirrored_anew", source=self.source, run_id=run_id,
                        reason="mirror.archive is not configured")  # fmt: skip
            return None
        for run in tree:
            self.records[run.run_id] = self.archived.pop(run.run_id)
        log.info("run_restored", source=self.source, run_id=run_id)
        return record

    def _run_dir(self, run: RunSnapshot, parent_dir: str, current: RunRecord | None) -> str:
        """`parent_dir/<name>`, else `<name>-<run id[:8]>`, else `<name>-<run id>`; a run keeps
        its current directory while that is still one of these names (as it is while neither
        its name nor its parent directory changed)."""
        if current is not None and current.name == run.name:
            parent, _, _ = current.dir.rpartition("/")
            if parent == parent_dir:
                return current.dir
        current_dir = current.dir if current else None
        candidates = _candidates(parent_dir, layout.sanitize_component(run.name), run.run_id)
        if current_dir in candidates:
            return current_dir
        return self._first_free(candidates, run.run_id)

    def _taken(self, dir: str) -> bool:
        """Whether `dir` is a run's directory (in the root or the archive): one the store keeps
        (looked up there: 100,000 directories are not held here), or one placed since."""
        return dir in self._new_dirs or self.journal.run_dir_taken(dir)

    def _first_free(self, candidates: list[str], run_id: str) -> str:
        for candidate in candidates:
            if not self._taken(candidate) and not self.journal.occupied(candidate):
                return candidate
        raise TbmirrorError(f"no free directory for run {run_id}: {candidates[0]} is taken")

    def _move(self, old_dir: str, new_dir: str) -> None:
        """Move a directory (and every run below it) on disk, in the store and here."""
        self.journal.move(self.source, old_dir, new_dir)
        for record in [*self.records.values(), *self.archived.values()]:
            if layout.within(record.dir, old_dir):
                record.dir = new_dir + record.dir[len(old_dir) :]
        moved = {dir for dir in self._new_dirs if layout.within(dir, old_dir)}
        self._new_dirs -= moved
        self._new_dirs |= {new_dir + dir[len(old_dir) :] for dir in moved}

    def remove(self, record: RunRecord) -> None:
        """Forget a deleted run (in the root or archived) and remove its own files and tfevents
        artifacts (nested child runs stay)."""
        self._forget([record])
        log.info("run_removed", source=self.source, run_id=record.run_id, dir=record.dir)

    def retire(self, record: RunRecord) -> list[str]:
        """Take a run that left the selection out of the root, with every run nested in its
        directory (its children): into the archive if there is one (under a free name), else
        removed with their files, tfevents artifact copies and rows. Returns the ids of the runs
        that left."""
        tree = [r for r in self.records.values() if layout.within(r.dir, record.dir)]
        if self.journal.layout.archive is not None:
            parent, _, name = layout.archived(record.dir).rpartition("/")
            self._move(record.dir, self._first_free(_candidates(parent, name, record.run_id),
                                                    record.run_id))  # fmt: skip
            for run in tree:
                self.archived[run.run_id] = self.records.pop(run.run_id)
        else:
            self._forget(tree)
        log.info("run_retired", source=self.source, run_id=record.run_id, dir=record.dir,
                 runs=len(tree), archived=self.journal.layout.archive is not None)  # fmt: skip
        return [run.run_id for run in tree]

    def _forget(self, runs: list[RunRecord]) -> None:
        """Remove runs with their files, tfevents artifact copies and rows."""
        with self.journal.batch(self.source) as batch:
            for run in runs:
                for tail in self.journal.tails(self.source, f"{run.run_id}/").values():
                    batch.forget_tail(tail)
                batch.forget_run(run)
        for run in runs:
            self.records.pop(run.run_id, None)
            self.archived.pop(run.run_id, None)
            self._new_dirs.discard(run.dir)

    def reset(self, record: RunRecord) -> None:
        """Forget what was written of a run whose file was lost: the next pass writes it anew."""
        log.warning("events_file_lost_run_reset", source=self.source, run_id=record.run_id)
        with self.journal.batch(self.source) as batch:
            self.records[record.run_id] = batch.reset_run(record)

    def artifact_dir(self, run_id: str, artifact: Artifact) -> str:
        """Where a tfevents artifact is mirrored: its folder (or `artifacts`) in the run's dir,
        made distinct from a child run's directory of that name."""
        run_dir = self.records[run_id].dir.split("/")
        folders = [layout.sanitize_component(f) for f in artifact.path.split("/")[:-1]]
        folders = folders or ["artifacts"]
        dir = layout.join(*run_dir, *folders)
        if self._taken(dir):
            dir = layout.join(*run_dir, layout.disambiguate(folders[0], "tfevents"), *folders[1:])
        return dir


def _candidates(parent_dir: str, component: str, run_id: str) -> list[str]:
    """Where a run called `component` may live under `parent_dir`, in order of preference."""
    return [
        layout.join(*parent_dir.split("/"), name)
        for name in (
            component,
            layout.disambiguate(component, run_id),
            layout.disambiguate(component, run_id, width=64),
        )
    ]
