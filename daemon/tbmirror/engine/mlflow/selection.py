"""Selection: which of a source's listed runs are mirrored, and which mirrored runs leave.

Top-level runs are judged; a child run follows its parent (it lives in its parent's directory):
- `filter`: evaluated by the server (sources/mlflow.py lists only the top-level runs matching it);
- `run_statuses`: a run whose status is not one of them is out;
- `max_age`: a finished run that ended longer ago than that is out;
- `max_runs`: per experiment, only the most recent top-level runs by start time; judged on
  complete (full) listings only, so new runs are taken in between and the oldest leave at the
  next full listing.

A mirrored run leaves only on proof (invariant 8), which the engine asks the server for: runs/get
shows it out by status or age; a search for it with the filter returns a well-formed empty page;
for `max_runs`, a complete listing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from tbmirror.config import MlflowSourceSettings
from tbmirror.model import RunSnapshot

STATUS, AGE, MAX_RUNS, PARENT = "status", "max_age", "max_runs", "parent"
FILTER = "filter"  # (found by the engine: absent from a full listing, refused by a search)


@dataclass
class Selected:
    """A listing's runs split: those to mirror (parents first), and why the others are out."""

    runs: list[RunSnapshot]
    out: dict[str, str] = field(default_factory=dict)  # run id -> STATUS, AGE, MAX_RUNS, PARENT


class Selection:
    """The selection of one source (stateless apart from the clock)."""

    def __init__(self, settings: MlflowSourceSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock

    def judge(self, run: RunSnapshot) -> str | None:
        """Why a top-level run is out by its own status or age, or None if it is in."""
        statuses = self.settings.run_statuses
        if statuses is not None and run.status not in statuses:
            return STATUS
        max_age = self.settings.max_age
        if max_age is not None and run.terminal:
            ended = (run.end_time or run.start_time or 0) / 1000
            if ended < self.clock() - max_age:
                return AGE
        return None

    def apply(
        self,
        runs: list[RunSnapshot],
        complete: bool,
        in_root: Collection[str],
        archived: Collection[str] = (),
    ) -> Selected:
        """Split listed `runs` (parents first). A child follows its parent: the parent's verdict
        if it is listed; in while the parent is mirrored `in_root` (until the parent leaves);
        out if the parent is `archived`, or a `filter` left it unlisted; otherwise (its parent
        deleted, say) it is judged as a top-level run. Deleted runs are judged in (their
        deletion is the engine's)."""
        if not self.settings.selective:
            return Selected(list(runs))
        listed = {run.run_id for run in runs}
        out: dict[str, str] = {}
        for run in runs:
            parent = run.parent_run_id
            if parent and parent != run.run_id:
                if parent in listed:
                    if parent in out:
                        out[run.run_id] = PARENT
                    continue
                if parent in in_root:
                    continue
                if parent in archived or self.settings.filter:
                    out[run.run_id] = PARENT
                    continue
            reason = None if run.deleted else self.judge(run)
            if reason:
                out[run.run_id] = reason
        if complete and self.settings.max_runs is not None:
            self._keep_most_recent(runs, out)
        return Selected([run for run in runs if run.run_id not in out], out)

    def _keep_most_recent(self, runs: list[RunSnapshot], out: dict[str, str]) -> None:
        """Mark top-level runs past the `max_runs` most recent of their experiment (and their
        children) out."""
        assert self.settings.max_runs is not None
        listed = {run.run_id for run in runs}
        by_experiment: dict[str, list[RunSnapshot]] = defaultdict(list)
        for run in runs:
            top_level = not run.parent_run_id or run.parent_run_id not in listed
            if top_level and run.run_id not in out and not run.deleted:
                by_experiment[run.experiment_id].append(run)
        for candidates in by_experiment.values():
            candidates.sort(key=lambda run: (run.start_time or 0, run.run_id), reverse=True)
            for run in candidates[self.settings.max_runs :]:
                out[run.run_id] = MAX_RUNS
        for run in runs:  # parents first: a child follows its parent out
            if run.parent_run_id in out and run.run_id not in out:
                out[run.run_id] = PARENT
