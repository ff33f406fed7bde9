"""One sync engine per configured source, whatever its type."""

from __future__ import annotations

from tbmirror.config import MlflowSourceSettings, SourceSettings
from tbmirror.mirror.writer import MirrorWriter
from tbmirror.sources.mlflow import MlflowSource
from tbmirror.state import State
from tbmirror.sync import SourceSync
from tbmirror.upload_sync import UploadSync

Engine = SourceSync | UploadSync


def build_engine(
    settings: SourceSettings, state: State, writer: MirrorWriter, in_daemon: bool = False
) -> Engine:
    """The engine that mirrors the source `settings` describe (close it when done). In the
    daemon, a pass lists the artifacts of at most `artifacts.batch` runs never looked at."""
    if isinstance(settings, MlflowSourceSettings):
        batch = settings.artifacts.batch if in_daemon else None
        return SourceSync(MlflowSource.from_settings(settings), state, writer, artifact_batch=batch)
    return UploadSync(settings, state, writer)
