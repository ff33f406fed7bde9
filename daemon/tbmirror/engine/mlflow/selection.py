"""Selection: which of a source's listed runs are mirrored, and which mirrored runs leave.

Top-level runs are judged; a child run follows its parent (it lives in its parent's directory):
- `filter`: evaluated by the server (sources/mlflow/listing.py lists only the top-level runs
  matching it);
- `run_statuses`: a run whose status is not one of them is out;
- `max_age`: a finished run that ended longer ago than that is out;
- `max_runs`: per experiment, only the most recent top-level runs by start time; judged on
  complete (full) listings only, so new runs are taken in between and the oldest leave at the
  next full listing. A run enters only if it is among the most recent of the runs listed and the
  mirrored runs the listing left out that the server does not prove gone (`rivals`): a listing
  cut short admits no old run in place of newer runs it did not show. A quick listing admits no
  run older than the oldest one the last complete listing kept (`Selection.oldest_kept`).

A mirrored run leaves only on proof (invariant 8), which the engine asks the server for: runs/get
shows it out by status or age; a search for it with the filter returns a well-formed empty page;
for `max_runs`, a complete listing.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from tbmirror.config import MlflowSourceSettings
from tbmirror.model import RunSnapshot

STATUS, AGE, MAX_RUNS, PARENT = "status", "max_age", "max_runs", "parent"
FILTER = "filter"  # (found by the engine: absent from a full listing, refused by a search)
PRUNE_DECIDED = 2000  # decided runs held at least before those mirrored since are forgotten

Ranked = tuple[float, str]  # (start time in ms, run id): the larger, the more recent
Rivals = Callable[[], Mapping[str, list[Ranked]]]  # experiment id -> mirrored runs not listed


@dataclass
class Selected:
    """A listing's runs split: those to mirror (parents first), and why the others are out."""

    runs: list[RunSnapshot]
    out: dict[str, str] = field(default_factory=dict)  # run id -> STATUS, AGE, MAX_RUNS, PARENT


class Selection:
    """The selection of one source: its settings, the clock, and what the last complete listing
    proved of `max_runs`."""

    def __init__(self, settings: MlflowSourceSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.oldest_kept: dict[str, tuple[int, str]] = {}  # experiment -> (start time, run id)

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
        runs: Iterable[RunSnapshot],
        complete: bool,
        in_root: Collection[str],
        archived: Collection[str] = (),
    ) -> Selected:
        """The whole of `stream` at once (for `tbmirror check` and tests)."""
        stream = self.stream(runs, complete, in_root, archived)
        return Selected(list(stream), stream.out)

    def stream(
        self,
        runs: Iterable[RunSnapshot],
        complete: bool,
        in_root: Collection[str],
        archived: Collection[str] = (),
        rivals: Rivals | None = None,
    ) -> SelectionStream:
        """The runs of a listing read as it arrives, split (SelectionStream)."""
        return SelectionStream(self, runs, complete, in_root, archived, rivals)


class SelectionStream:
    """Iterating yields the listed runs to mirror, each parent before its children, as the
    listing arrives; `out` says why each run left out is (complete once iterated).

    A child follows its parent: the parent's verdict once the parent is listed; in while the
    parent is mirrored `in_root` (until the parent leaves); out if the parent is `archived`, or a
    `filter` left it unlisted; otherwise (its parent deleted, say) it is judged as a top-level
    run. A child listed before its parent waits for it (listings come oldest first, so this is
    rare) until the listing ends. Deleted runs are judged in (their deletion is the engine's).

    With `max_runs` on a `complete` listing, top-level runs are held, per experiment, while they
    are among its `max_runs` most recent so far (their children with them), and yielded once the
    listing has ended: only the selection is ever held, never the whole listing. Then `rivals`
    (called once the listing has ended) gives, per experiment, the mirrored top-level runs the
    listing did not show and the server does not prove gone: a held run not mirrored yet that is
    not among the `max_runs` most recent of both is out too (a mirrored one stays: rivals that
    were not listed prove nothing).
    """

    def __init__(
        self,
        selection: Selection,
        runs: Iterable[RunSnapshot],
        complete: bool,
        in_root: Collection[str],
        archived: Collection[str],
        rivals: Rivals | None = None,
    ) -> None:
        self.out: dict[str, str] = {}
        self._rivals = rivals
        self._selection = selection
        self._runs = runs
        self._in_root = in_root
        self._archived = archived
        self._max_runs = selection.settings.max_runs if complete else None
        self._decided: set[str] = set()  # in (yielded or held) or out; not in_root (_judged)
        self._prune_at = PRUNE_DECIDED
        self._waiting: dict[str, list[RunSnapshot]] = defaultdict(list)  # by their parent's id
        self._waiting_ids: set[str] = set()
        self._held: dict[str, list[tuple[int, str]]] = defaultdict(list)  # experiment -> heap
        self._trees: dict[str, list[RunSnapshot]] = {}  # a held top-level run's id -> its tree
        self._tree_of: dict[str, str] = {}  # a held run's id -> its top-level run's id

    def __iter__(self) -> Iterator[RunSnapshot]:
        for run in self._runs:
            parent = _parent_of(run)
            if parent and parent not in self._decided and parent not in self._in_root:
                self._waiting[parent].append(run)
                self._waiting_ids.add(run.run_id)
                continue
            yield from self._decide(run, parent_listed=self._judged(parent))
        while self._waiting:  # parents never listed (first), or listed in a cycle
            roots = (parent for parent in self._waiting if parent not in self._waiting_ids)
            parent = next(roots, next(iter(self._waiting)))
            for run in self._waiting.pop(parent):
                yield from self._decide(run, parent_listed=False)
        self._rank_with_rivals()
        for tree in self._trees.values():
            yield from tree

    def _decide(self, run: RunSnapshot, parent_listed: bool) -> Iterator[RunSnapshot]:
        """Judge `run`, then the children waiting for it; yields those that are in now."""
        todo = [(run, parent_listed)]
        while todo:
            run, parent_listed = todo.pop()
            if run.run_id not in self._in_root:
                self._decided.add(run.run_id)
                if len(self._decided) >= self._prune_at:
                    self._prune_decided()
            self._waiting_ids.discard(run.run_id)
            reason, tree = self._verdict(run, parent_listed)
            if reason:
                self.out[run.run_id] = reason
            elif tree is not None:
                self._trees[tree].append(run)
                self._tree_of[run.run_id] = tree
            else:
                yield run
            todo += [(child, True) for child in reversed(self._waiting.pop(run.run_id, []))]

    def _prune_decided(self) -> None:
        """Forget the decided runs that are mirrored (`in_root`) by now: the engine places each
        run it is given, and `in_root` only grows while a listing is read, so every question
        about them is answered the same (see `_judged`, `_verdict`); a first sync then holds the
        ids of the runs not placed yet, not of all 100,000 it judged."""
        self._decided = {run_id for run_id in self._decided if run_id not in self._in_root}
        self._prune_at = max(PRUNE_DECIDED, 2 * len(self._decided))

    def _judged(self, run_id: str | None) -> bool:
        """Whether `run_id` was judged in this listing. A mirrored (`in_root`) run is known judged
        only if out or held (a daemon's first pass judges 100,000 mirrored runs, none kept): its
        child's verdict is the same either way otherwise (in, see `_verdict`)."""
        return run_id in self._decided or run_id in self.out or run_id in self._tree_of

    def _verdict(self, run: RunSnapshot, parent_listed: bool) -> tuple[str | None, str | None]:
        """(why `run` is out, or None; the id of the held tree it joins, or None)."""
        settings = self._selection.settings
        parent = _parent_of(run)
        if parent and parent_listed:
            return (PARENT if parent in self.out else None), self._tree_of.get(parent)
        if parent and parent in self._in_root:
            return None, None
        if parent and (parent in self._archived or settings.filter):
            return PARENT, None
        if not settings.selective or run.deleted:
            return None, None
        reason = self._selection.judge(run)
        if reason:
            return reason, None
        if self._max_runs is not None:
            return (None, run.run_id) if self._hold(run) else (MAX_RUNS, None)
        kept = self._selection.oldest_kept.get(run.experiment_id)
        if kept and run.run_id not in self._in_root and (run.start_time or 0, run.run_id) < kept:
            return MAX_RUNS, None  # (a complete listing showed `max_runs` more recent runs)
        return None, None

    def _hold(self, run: RunSnapshot) -> bool:
        """Hold a top-level run among its experiment's `max_runs` most recent so far; the oldest
        held one past them leaves, its tree with it. Whether `run` is held."""
        assert self._max_runs is not None
        heap = self._held[run.experiment_id]
        heapq.heappush(heap, (run.start_time or 0, run.run_id))
        if len(heap) <= self._max_runs:
            self._trees[run.run_id] = []
            return True
        _, oldest = heapq.heappop(heap)
        if oldest == run.run_id:
            return False
        self._drop(oldest)
        self._trees[run.run_id] = []
        return True

    def _rank_with_rivals(self) -> None:
        """Once a complete listing has ended: keep, per experiment, the oldest of its `max_runs`
        most recent listed runs for the quick listings to come; put out each held run not
        mirrored yet that is past the `max_runs` most recent once the rivals are ranked with the
        held runs."""
        if self._max_runs is None:
            return
        self._selection.oldest_kept = {
            experiment_id: min(heap)
            for experiment_id, heap in self._held.items()
            if len(heap) >= self._max_runs
        }
        if self._rivals is None:
            return
        for experiment_id, rivals in self._rivals().items():
            held = [(float(start), run_id, True) for start, run_id in self._held[experiment_id]]
            ranked = sorted(held + [(start, run_id, False) for start, run_id in rivals])
            for _, run_id, listed in ranked[: max(len(ranked) - self._max_runs, 0)]:
                if listed and run_id not in self._in_root:
                    self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        """Put a held top-level run out (MAX_RUNS), its tree with it."""
        for member in self._trees.pop(run_id):
            del self._tree_of[member.run_id]
            self.out[member.run_id] = PARENT
        self.out[run_id] = MAX_RUNS


def _parent_of(run: RunSnapshot) -> str | None:
    parent = run.parent_run_id
    return parent if parent and parent != run.run_id else None
