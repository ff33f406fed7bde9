"""The `uploads` kind: a directory tree training jobs write TensorBoard logs or CSV/JSON-lines
metric logs into, watched and rescanned. Its settings are tbmirror.config's
`UploadsSourceSettings`."""

from __future__ import annotations

import threading
from collections import Counter

from tbmirror.checks import Finding
from tbmirror.config import UploadsSourceSettings
from tbmirror.engine.base import Engine
from tbmirror.journal import Journal
from tbmirror.kinds.base import Schedule
from tbmirror.sources.uploads import UploadTree


class UploadsKind:
    """The `uploads` kind (see tbmirror.kinds.base.SourceKind)."""

    settings = UploadsSourceSettings

    def build(
        self, settings: UploadsSourceSettings, journal: Journal, stop: threading.Event | None
    ) -> Engine:
        # (imported here: the engine brings TensorBoard's protos, which `status` does without)
        from tbmirror.engine.uploads import UploadEngine

        return UploadEngine(settings, journal)

    def check(self, settings: UploadsSourceSettings) -> list[Finding]:
        """The directory is there and readable, and what it holds to mirror."""
        if not settings.path.is_dir():
            text = f"upload directory {settings.path} does not exist"
            return [Finding(settings.name, False, text)]
        problems: list[str] = []
        tree = UploadTree(settings)
        scanned = tree.scan(problem=lambda r, m: problems.append(f"{r}: {m}"))
        counts = sorted(Counter(file.kind for file in scanned).items())
        found = ", ".join(f"{n} {kind}" for kind, n in counts) or "no files to mirror"
        text = f"{settings.path} ({settings.observer} observer): {found}"
        if problems:
            text += f"; {len(problems)} skipped: {'; '.join(problems[:3])}"
        return [Finding(settings.name, True, text)]

    def location(self, settings: UploadsSourceSettings) -> str:
        return str(settings.path)

    def owns_experiment(self, settings: UploadsSourceSettings, name: str) -> bool:
        return True  # it records no experiments: its files leave with the source

    def schedule(self, settings: UploadsSourceSettings) -> Schedule:
        """A rescan every `rescan_interval` (the watcher sees changes in between)."""
        return Schedule(settings.rescan_interval)

    def link_base(self, settings: UploadsSourceSettings) -> str | None:
        return None


KIND = UploadsKind()
