"""The `mlflow` kind: an MLflow tracking server (or anything speaking its REST API), polled.

Its settings are tbmirror.config's `MlflowSourceSettings`; build.py makes its source and engine
(the clouds' defaults included), check.py is what `tbmirror check` says of it.
"""

from __future__ import annotations

import threading

from tbmirror.checks import Finding
from tbmirror.config import MlflowSourceSettings, without_userinfo
from tbmirror.engine.base import Engine
from tbmirror.journal import Journal
from tbmirror.kinds.base import Schedule
from tbmirror.kinds.mlflow.build import build_engine, build_source, with_cloud_defaults
from tbmirror.kinds.mlflow.check import check

__all__ = ["KIND", "MlflowKind", "build_engine", "build_source", "with_cloud_defaults"]


class MlflowKind:
    """The `mlflow` kind (see tbmirror.kinds.base.SourceKind)."""

    settings = MlflowSourceSettings

    def build(
        self, settings: MlflowSourceSettings, journal: Journal, stop: threading.Event | None
    ) -> Engine:
        return build_engine(settings, journal, stop)

    def check(self, settings: MlflowSourceSettings) -> list[Finding]:
        return check(settings)

    def location(self, settings: MlflowSourceSettings) -> str:
        return without_userinfo(settings.tracking_uri)

    def owns_experiment(self, settings: MlflowSourceSettings, name: str) -> bool:
        return settings.covers(name)

    def schedule(self, settings: MlflowSourceSettings) -> Schedule:
        return Schedule(settings.poll_interval, settings.full_listing_interval)

    def link_base(self, settings: MlflowSourceSettings) -> str | None:
        return settings.run_link_base


KIND = MlflowKind()
