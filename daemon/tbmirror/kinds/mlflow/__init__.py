"""The `mlflow` kind: an MLflow tracking server (or anything speaking its REST API), polled.

Its settings are tbmirror.config's `MlflowSourceSettings`; build.py makes its source and engine
(the clouds' defaults included), check.py is what `tbmirror check` says of it.

Both are imported when first used, not with the kind: they bring the engine, the HTTP stack and
TensorBoard's protos, which `tbmirror status` and `prune` (the kind's other methods) do without.
"""

from __future__ import annotations

import threading
from typing import Any

from tbmirror.checks import Finding
from tbmirror.config import MlflowSourceSettings, without_userinfo
from tbmirror.engine.base import Engine
from tbmirror.journal import Journal
from tbmirror.kinds.base import Schedule

__all__ = ["KIND", "MlflowKind", "build_engine", "build_source", "with_cloud_defaults"]


class MlflowKind:
    """The `mlflow` kind (see tbmirror.kinds.base.SourceKind)."""

    settings = MlflowSourceSettings

    def build(
        self, settings: MlflowSourceSettings, journal: Journal, stop: threading.Event | None
    ) -> Engine:
        from tbmirror.kinds.mlflow.build import build_engine

        return build_engine(settings, journal, stop)

    def check(self, settings: MlflowSourceSettings) -> list[Finding]:
        from tbmirror.kinds.mlflow.check import check

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


def __getattr__(name: str) -> Any:
    """build.py's public functions, imported from it when first asked for (see above)."""
    if name in ("build_engine", "build_source", "with_cloud_defaults"):
        from tbmirror.kinds.mlflow import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
