"""Pruning: what this state store recorded that no configured source or experiment owns any more.

The daemon never removes what its config does not cover (a source or experiment dropped from the
config may come back); `tbmirror prune` does, and `tbmirror status` shows what it would remove.
It removes only what this store recorded (runs, tailed files, their files and rows), under the
source's subtree lock, so nothing another process owns on a shared root is touched. Experiments are
judged by the names this store recorded against the configured names and globs (no server asked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tbmirror.config import Settings, SourceSettings
from tbmirror.journal import Journal
from tbmirror.mirror.layout import archived, within
from tbmirror.model import RunRecord, TailRecord


class StoreView(Protocol):
    """The reads pruning makes (a Journal, or a read-only Store for `status`)."""

    def sources(self) -> set[str]: ...
    def runs(self, source: str) -> dict[str, RunRecord]: ...
    def tails(self, source: str, origin_prefix: str = "") -> dict[str, TailRecord]: ...
    def experiment_dirs(self, source: str) -> dict[str, tuple[str, str]]: ...


@dataclass(frozen=True)
class Unowned:
    """A source, or an experiment of a source, that no configuration owns any more."""

    source: str
    dir: str  # its directory under the root
    why: str
    runs: tuple[RunRecord, ...]
    tails: tuple[TailRecord, ...]
    experiment_ids: tuple[str, ...]
    whole_source: bool


def find_unowned(
    settings: Settings, store: StoreView, owns_experiment: Callable[[SourceSettings, str], bool]
) -> list[Unowned]:
    """What `prune` would remove, source by source: sources not configured, and experiments
    recorded that their configured source no longer owns (`owns_experiment`: its kind's rule)."""
    configured = {source.name: source for source in settings.sources}
    found: list[Unowned] = []
    for name in sorted(store.sources()):
        runs, tails = store.runs(name), store.tails(name)
        experiments = store.experiment_dirs(name)
        source = configured.get(name)
        if source is None:
            found.append(Unowned(name, name, "source not configured", tuple(runs.values()),
                                 tuple(tails.values()), tuple(experiments), True))  # fmt: skip
            continue
        for experiment_id, (experiment, directory) in sorted(experiments.items()):
            if owns_experiment(source, experiment):
                continue
            inside = tuple(r for r in runs.values() if _below(r.dir, directory))
            ids = {run.run_id for run in inside}
            owned_tails = tuple(t for t in tails.values() if t.origin.split("/")[0] in ids)
            why = f"experiment {experiment!r} not configured"
            found.append(Unowned(name, directory, why, inside, owned_tails,
                                 (experiment_id,), False))  # fmt: skip
    return found


def _below(run_dir: str, directory: str) -> bool:
    return within(run_dir, directory) or within(run_dir, archived(directory))


def remove(journal: Journal, unowned: Unowned) -> None:
    """Remove what `unowned` names: files first discarded, rows forgotten, in one batch. A source
    no longer configured is locked first (MirrorError if another process holds it)."""
    if unowned.whole_source:
        journal.own(unowned.source)
    with journal.batch(unowned.source) as batch:
        for tail in unowned.tails:
            batch.forget_tail(tail)
        for run in unowned.runs:
            batch.forget_run(run)
        for experiment_id in unowned.experiment_ids:
            batch.forget_experiment(unowned.source, experiment_id)
        if unowned.whole_source:
            batch.forget_source_status(unowned.source)
