"""Removal by proof (invariant 8): the one place where a run's mirror leaves the root.

A listing proves nothing by what it lacks, and a wrong-shape answer, a 3xx or an HTML page is an
error, never evidence. A run is removed (`on_delete: remove`) only when a listing shows it
deleted, or runs/get says of a run a full listing of its experiment did not show that it is
deleted or does not exist (a JSON 404 with RESOURCE_DOES_NOT_EXIST). A top-level run leaves the
selection (to the archive or out of the root, its children with it) only when the server proves
it out (engine/mlflow/selection.py); with a `filter`, a search with it must not find the run
while the same search without it does (a control). With `max_runs`, the mirrored runs a full
listing did not show and the server does not prove gone are the selection's rivals: a listing cut
short admits no older run in their place. At most PROOF_CHECKS runs are asked about per pass for
each kind of proof; the rest wait for the next pass.
"""

from __future__ import annotations

import weakref

import structlog

from tbmirror.engine.base import PassReport, RunFailed
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.mlflow.selection import AGE, FILTER, STATUS, Ranked, Selection
from tbmirror.engine.mlflow.source import RunSource
from tbmirror.errors import TbmirrorError, WriteFault
from tbmirror.sources.http import StoppedError
from tbmirror.sources.mlflow import RunListing, RunState

log = structlog.get_logger(__name__)

PROOF_CHECKS = 200  # runs asked about (runs/get, a search) per pass, for each kind of proof


class Removal:
    """Takes one source's runs out of the mirror on proof. Not thread-safe (one pass at a time)."""

    def __init__(
        self,
        source: RunSource,
        placement: Placement,
        selection: Selection,
        run_failed: RunFailed,
    ) -> None:
        """`run_failed` is told of a run whose proof failed."""
        self.source = source
        self.settings = source.settings
        self.placement = placement
        self.selection = selection
        self._run_failed = run_failed
        # (the listing is referred to weakly: its set of 100,000 listed ids is let go with it,
        # not held through the next pass)
        self._absent: tuple[weakref.ref[RunListing], dict[str, RunState | None]] | None = None

    def after_listing(
        self, listing: RunListing, full: bool, out: dict[str, str], report: PassReport
    ) -> None:
        """Remove the runs proven deleted and retire those proven out of the selection, once
        `listing` was read to its end; `out`: the mirrored runs the selection put out (-> why)."""
        needs_proof = self.settings.on_delete == "remove" or bool(self.settings.filter)
        absent = self._absent_states(listing, full) if needs_proof else {}
        if self.settings.on_delete == "remove":
            self._remove_deleted(listing, absent, report)
        self._retire(out, absent, report)

    def rivals(self, listing: RunListing, full: bool) -> dict[str, list[Ranked]]:
        """Per experiment, the mirrored top-level runs a full `listing` (read to its end) did not
        show and the server does not prove gone or out by status or age, ranked by start time
        (one it gave no clear answer about ranks as the most recent of all)."""
        records = self.placement.records
        rivals: dict[str, list[Ranked]] = {}
        asked = 0
        for run_id, state in self._absent_states(listing, full).items():
            record = records.get(run_id)
            if record is None or state in ("deleted", "gone") or record.parent_run_id in records:
                continue
            start = float("inf")
            if state == "active" and asked < PROOF_CHECKS:
                asked += 1
                try:
                    run = self.source.run(run_id)
                    if self.selection.judge(run) is not None:
                        continue
                    start = float(run.start_time or 0)
                except StoppedError:
                    raise
                except TbmirrorError as error:  # no start time: the most recent of all
                    log.warning("run_absent_unranked", source=self.source.name, run_id=run_id,
                                error=str(error))  # fmt: skip
            rivals.setdefault(record.experiment_id, []).append((start, run_id))
        return rivals

    def _absent_states(self, listing: RunListing, full: bool) -> dict[str, RunState | None]:
        """What runs/get says of each mirrored run a full listing of its experiment does not
        show (None: no clear answer, or not asked: at most PROOF_CHECKS are), once per listing
        (kept while the listing lives)."""
        if self._absent is not None and self._absent[0]() is listing:
            return self._absent[1]
        states: dict[str, RunState | None] = {}
        if full:
            shown = listing.listed
            searched = set(listing.experiments)  # a run of a missing experiment is not "gone"
            absent = [
                run_id
                for run_id, record in self.placement.records.items()
                if run_id not in shown and record.experiment_id in searched
            ]
            states = dict.fromkeys(absent)
            for run_id in absent[:PROOF_CHECKS]:
                try:
                    states[run_id] = self.source.run_state(run_id)
                except StoppedError:
                    raise
                except TbmirrorError as error:  # no proof either way: kept
                    log.warning("run_absent_kept", source=self.source.name, run_id=run_id,
                                error=str(error))  # fmt: skip
        self._absent = (weakref.ref(listing), states)
        return states

    def _remove_deleted(
        self, listing: RunListing, absent: dict[str, RunState | None], report: PassReport
    ) -> None:
        """Remove the mirror of runs proven deleted: shown deleted in the listing, or absent
        from it and deleted or unknown to the server (runs/get: RESOURCE_DOES_NOT_EXIST)."""
        deleted = set(listing.deleted)
        deleted |= {run_id for run_id, state in absent.items() if state in ("deleted", "gone")}
        for run_id in sorted(deleted):  # (a few: never a copy of 100,000 records each pass)
            record = self.placement.records.get(run_id) or self.placement.archived.get(run_id)
            if record is not None:
                self.placement.remove(record)
                report.runs_removed += 1

    def _retire(
        self, out: dict[str, str], absent: dict[str, RunState | None], report: PassReport
    ) -> None:
        """Take mirrored top-level runs out of the root (their children with them) once the
        server proves they left the selection (selection.py): runs/get shows them out by status
        or age; for one absent from a full listing, a search with the filter does not find it
        and the same search without the filter does; a complete listing puts them past
        `max_runs`; their parent left already. At most PROOF_CHECKS requests."""
        records = self.placement.records
        candidates = [  # a child whose parent is in the root leaves with it
            (records[run_id], reason)
            for run_id, reason in out.items()
            if run_id in records and records[run_id].parent_run_id not in records
        ]
        if self.settings.filter:
            candidates += [
                (records[run_id], FILTER)
                for run_id, state in absent.items()
                if state == "active" and records[run_id].parent_run_id not in records
            ]
        asked = 0
        for record, reason in candidates:
            needs_proof = reason in (STATUS, AGE, FILTER)
            if record.run_id not in records or (needs_proof and asked >= PROOF_CHECKS):
                continue  # it left with its parent, or no more questions this pass
            asked += needs_proof
            try:
                if reason in (STATUS, AGE):
                    proven = self.selection.judge(self.source.run(record.run_id)) is not None
                elif reason == FILTER:
                    proven = not self.source.matches_filter(record.run_id, record.experiment_id)
                else:  # MAX_RUNS (a complete listing) or PARENT (its parent left)
                    proven = True
                if proven:
                    log.info("run_left_selection", source=self.source.name, run_id=record.run_id,
                             reason=reason)  # fmt: skip
                    report.runs_retired += len(self.placement.retire(record))
            except (WriteFault, StoppedError):
                raise  # the disk, or the daemon stops: not this run's failure
            except TbmirrorError as error:  # no proof, or the move failed: this run only
                self._run_failed(report, record.run_id, error)
