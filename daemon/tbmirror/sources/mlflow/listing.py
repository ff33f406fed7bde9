"""Run listings: the configured experiments and every run to mirror, read page by page.

A full listing holds every run of the configured experiments, deleted ones too, and child runs
logged into other experiments whose parent is listed or mirrored. A quick one reuses the
experiments of the last full listing and holds only runs that are running, new, or were last seen
running. With a `filter`, the server selects top-level runs (children follow their parent:
engine/mlflow/selection.py), and a 400 names the filter it refused.

The requests that do not wait on one another's answer are made side by side, on threads: the
configured experiments are looked up by name together (`concurrency` at most at once), and every
experiment is searched (to know where else child runs may be) while the runs of the configured
experiments are listed (a pass with nothing to do made four requests one after another; now
three round trips). Each answer is
used, and each error raised, where it was when the requests were made one after another (an error
once the request beside it has ended); no two runs/search are made at once.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tbmirror.config import MlflowSourceSettings
from tbmirror.errors import SourceError
from tbmirror.model import Experiment, RunSnapshot
from tbmirror.sources.http import BadAnswerError, HttpStatusError
from tbmirror.sources.mlflow.client import PARENT_TAG, MlflowClient, chunks

TOP_LEVEL = f"tags.`{PARENT_TAG}` IS NULL"
CHILD = f"tags.`{PARENT_TAG}` IS NOT NULL"
_RUN_ID = re.compile(r"^[A-Za-z0-9][\w-]{0,255}$")


class SelectionError(SourceError):
    """The server refused the configured `filter`."""


@dataclass
class RunListing:
    """One listing of a source: its experiments, and its runs read page by page as they are
    iterated (each once, oldest first: a parent mostly before its children; a child in another
    experiment after its parent). `listed` and `deleted` hold the ids of the runs iterated so
    far; a listing is complete only once its runs have been iterated to the end without an
    error."""

    experiments: dict[str, Experiment]
    runs: Iterator[RunSnapshot]
    missing_experiments: list[str] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)

    def note(self, run: RunSnapshot) -> None:
        """Count `run` as iterated."""
        self.listed.add(run.run_id)
        if run.deleted:
            self.deleted.add(run.run_id)


class RunLister:
    """Lists the runs of one configured source. One listing at a time."""

    def __init__(self, settings: MlflowSourceSettings, client: MlflowClient) -> None:
        self.settings, self.client = settings, client
        self._experiments: dict[str, Experiment] | None = None
        self._missing: list[str] = []
        self._other_experiments: list[str] | None = None
        self._every: list[Experiment] | None = None  # every experiment, if the look-up searched

    def experiments(self) -> tuple[dict[str, Experiment], list[str]]:
        """The configured experiments that exist (by id), and the configured names that do not."""
        found, missing, _ = self._look_up()
        return found, missing

    def _look_up(self) -> tuple[dict[str, Experiment], list[str], list[Experiment] | None]:
        """`experiments()`, and every experiment when it took the search for them (globs), the
        requests made at once (see above)."""
        if self.settings.all_experiments:
            everyone = self.client.experiments()
            return {e.experiment_id: e for e in everyone}, [], everyone
        globs = self.settings.experiment_globs
        names = [name for name in self.settings.experiments if name not in globs]
        threads = max(1, min(self.settings.concurrency, len(names) + bool(globs)))
        with ThreadPoolExecutor(threads, thread_name_prefix="look-up") as pool:
            searched = pool.submit(self.client.experiments) if globs else None
            named = [pool.submit(self.client.experiment_by_name, name) for name in names]
        found: dict[str, Experiment] = {}
        missing: list[str] = []
        every = searched.result() if searched is not None else None
        if every is not None:
            found.update((e.experiment_id, e) for e in every if self.settings.covers(e.name))
            missing += [g for g in globs if not any(fnmatch.fnmatchcase(e.name, g) for e in every)]
        for name, answer in zip(names, named, strict=True):
            experiment = answer.result()
            if experiment is None or experiment.lifecycle_stage == "deleted":
                missing.append(name)
            else:
                found[experiment.experiment_id] = experiment
        return found, missing, every

    def list_runs(
        self,
        since_ms: int | None = None,
        watch_ids: Iterable[str] = (),
        mirrored_ids: Collection[str] = (),
    ) -> RunListing:
        """Runs to mirror, read page by page as `RunListing.runs` is iterated. Raises SourceError
        (its iteration too).

        A full listing (`since_ms` None) holds every run of the configured experiments. A quick
        one reuses the experiments of the last full listing and holds only runs that are running,
        started at or after `since_ms`, or are in `watch_ids` (runs last seen running).
        `mirrored_ids` are runs already mirrored: children of those logged into other experiments
        are listed too.
        """
        if since_ms is None or self._experiments is None:
            self._experiments, self._missing, self._every = self._look_up()
            self._other_experiments = None
            filters = [""]
        else:
            filters = ["attributes.status = 'RUNNING'", f"attributes.start_time >= {since_ms}"]
        listing = RunListing(dict(self._experiments), iter(()), list(self._missing))
        listing.runs = self._listed_runs(listing, filters, list(watch_ids), mirrored_ids)
        return listing

    @property
    def _with_children(self) -> bool:
        """Whether child runs are searched in experiments other than those configured."""
        return self.settings.child_runs_in_other_experiments and not self.settings.all_experiments

    def _listed_runs(
        self,
        listing: RunListing,
        filters: list[str],
        watch_ids: list[str],
        mirrored_ids: Collection[str],
    ) -> Iterator[RunSnapshot]:
        """The runs of `listing`, each once, noted in its `listed` and `deleted` as yielded."""
        assert self._experiments is not None
        listed = listing.listed
        with ThreadPoolExecutor(1, thread_name_prefix="experiments") as pool:
            others = pool.submit(self._others) if self._with_children else None
            for run in self._search(sorted(self._experiments), filters, watch_ids):
                if run.run_id not in listed:
                    listing.note(run)
                    yield run
            if others is None:
                return
            experiment_ids = others.result()
        children = [_all_of(CHILD, f) for f in filters]
        candidates = {r.run_id: r for r in self._search(experiment_ids, children, watch_ids, False)}
        added = True
        while added:  # children of children: until none is added
            added = False
            for run_id, run in list(candidates.items()):
                parent = run.parent_run_id
                if (parent in listed or parent in mirrored_ids) and run_id not in listed:
                    del candidates[run_id]
                    listing.note(run)
                    added = True
                    yield run

    def _others(self) -> list[str]:
        """The ids of the experiments other than those configured, where child runs are searched
        (those of the last full listing; searched if it did not search them)."""
        assert self._experiments is not None
        if self._other_experiments is None:
            every = self._every if self._every is not None else self.client.experiments()
            ids = sorted(e.experiment_id for e in every)
            self._other_experiments = [e for e in ids if e not in self._experiments]
        return self._other_experiments

    def _search(
        self,
        experiment_ids: list[str],
        filters: list[str],
        run_ids: Iterable[str],
        selected: bool = True,
    ) -> Iterator[RunSnapshot]:
        """Runs of `experiment_ids` matching any of `filters`, or whose id is in `run_ids`; if
        `selected` and a `filter` is configured, top-level runs only if they match it (children
        are all listed: they follow their parent, engine/mlflow/selection.py)."""
        wanted = sorted({run_id for run_id in run_ids if _RUN_ID.match(run_id)})
        queries = list(filters) + [
            "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in chunk) + ")"
            for chunk in chunks(wanted)
        ]
        if selected and self.settings.filter:
            queries = [
                _all_of(query, clause)
                for query in queries
                for clause in (f"{TOP_LEVEL} AND {self.settings.filter}", CHILD)
            ]
        for experiments in chunks(experiment_ids):
            for query in queries:
                yield from self._refused_filter_named(self.client.search_runs(experiments, query))

    def matches_filter(self, run_id: str, experiment_id: str) -> bool:
        """Whether the server says the run matches `filter`. A search for it with the filter that
        does not find it proves it does not only with a control: the same search without the
        filter finds it (a gateway answering `{}` to every search proves nothing). Raises
        SourceError (BadAnswerError if neither search finds it)."""
        if not _RUN_ID.match(run_id):
            raise BadAnswerError(f"not a run id: {run_id[:64]!r}")
        query = f"attributes.run_id = '{run_id}'"
        filtered = _all_of(query, self.settings.filter)
        found = self._refused_filter_named(self.client.search_runs([experiment_id], filtered))
        if any(run.run_id == run_id for run in found):
            return True
        if any(run.run_id == run_id for run in self.client.search_runs([experiment_id], query)):
            return False
        raise BadAnswerError(
            f"runs/search finds run {run_id} neither with the filter nor without it: "
            "no proof it left the selection"
        )

    def _refused_filter_named(self, runs: Iterator[RunSnapshot]) -> Iterator[RunSnapshot]:
        """`runs`, with a 400 from the server, when a `filter` is configured, as an error that
        names it."""
        try:
            yield from runs
        except HttpStatusError as error:
            if error.status_code != 400 or not self.settings.filter:
                raise
            raise SelectionError(
                f"filter: the server refused {self.settings.filter!r}: {error}"
            ) from None


def _all_of(*clauses: str) -> str:
    return " AND ".join(clause for clause in clauses if clause)
