"""What a kind of source offers the rest of tbmirror, and the registry that finds a source's kind.

A kind answers to one settings model (a member of tbmirror.config's `SourceSettings`, told apart
by its `type:` value) and knows, for settings of that model: how to build the engine that mirrors
the source, what `tbmirror check` says of it, where it reads from (for messages), which recorded
experiments it still owns (for `prune`), its schedule, and the base of the links back to its runs.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple, Protocol, TypeVar

from tbmirror.checks import Finding
from tbmirror.config import SourceSettings
from tbmirror.engine.base import Engine
from tbmirror.errors import TbmirrorError
from tbmirror.journal import Journal

S = TypeVar("S", contravariant=True)


class Schedule(NamedTuple):
    """How the daemon polls a source: a pass every `poll_interval` seconds, listing everything
    (deletions, renames) at most every `full_listing_interval` seconds (0: every pass)."""

    poll_interval: float
    full_listing_interval: float = 0.0


class SourceKind(Protocol[S]):
    """One kind of source; `settings` is the settings section (whose `tag` is its `type:`) it
    answers to."""

    @property
    def settings(self) -> type[Any]: ...

    def build(self, settings: S, journal: Journal, stop: threading.Event | None) -> Engine:
        """The engine mirroring the source (close it when done). `stop` is the daemon's: set,
        it ends waits and reads at once; None for a one-off `tbmirror sync`."""
        ...

    def check(self, settings: S) -> list[Finding]:
        """What `tbmirror check` says of the source (contacting it, without retries)."""
        ...

    def location(self, settings: S) -> str:
        """Where the source reads from, as shown to an operator (never with a secret)."""
        ...

    def owns_experiment(self, settings: S, name: str) -> bool:
        """Whether the source still owns the recorded experiment `name` (False: prune it)."""
        ...

    def schedule(self, settings: S) -> Schedule: ...

    def link_base(self, settings: S) -> str | None:
        """The base URL the mirror's runs link back to (None: they link nowhere)."""
        ...


class Registry:
    """The kinds tbmirror knows, found by the model of a source's settings."""

    def __init__(self, *kinds: SourceKind[Any]) -> None:
        self._kinds: dict[type[Any], SourceKind[Any]] = {kind.settings: kind for kind in kinds}

    def of(self, settings: SourceSettings) -> SourceKind[Any]:
        """The kind of the source `settings` describe."""
        kind = self._kinds.get(type(settings))
        if kind is None:
            raise TbmirrorError(f"source {settings.name!r}: no kind is registered for its type")
        return kind

    def build(
        self, settings: SourceSettings, journal: Journal, stop: threading.Event | None = None
    ) -> Engine:
        return self.of(settings).build(settings, journal, stop)

    def check(self, settings: SourceSettings) -> list[Finding]:
        return self.of(settings).check(settings)

    def location(self, settings: SourceSettings) -> str:
        return self.of(settings).location(settings)

    def owns_experiment(self, settings: SourceSettings, name: str) -> bool:
        return self.of(settings).owns_experiment(settings, name)

    def schedule(self, settings: SourceSettings) -> Schedule:
        return self.of(settings).schedule(settings)

    def link_base(self, settings: SourceSettings) -> str | None:
        return self.of(settings).link_base(settings)
