"""`tbmirror check` of an MLflow source: the server answers as MLflow, and every configured
experiment name or glob matches (no retries: a refused port, an unknown host or a server that is
not MLflow's is said at once)."""

from __future__ import annotations

import difflib
import time
from collections import Counter

import msgspec

from tbmirror.checks import Finding
from tbmirror.config import MlflowSourceSettings, without_userinfo
from tbmirror.engine.mlflow.selection import Selection
from tbmirror.errors import TbmirrorError
from tbmirror.kinds.mlflow.build import build_source
from tbmirror.sources.http import HttpStatusError
from tbmirror.sources.mlflow import MlflowSource

NOT_MLFLOW_STATUS = (404, 405, 501)  # without MLflow's error_code: no such endpoint there


def check(settings: MlflowSourceSettings) -> list[Finding]:
    """The server answers as MLflow, and every configured experiment name or glob matches."""
    name, url = settings.name, without_userinfo(settings.tracking_uri)
    try:
        source = build_source(msgspec.structs.replace(settings, max_retries=0))
    except TbmirrorError as error:  # a secret file that cannot be read
        return [Finding(name, False, str(error))]
    try:
        experiments, missing = source.experiments()
        visible = sorted(e.name for e in source.client.experiments())
        selected = _selected_per_experiment(source) if settings.selective else {}
    except HttpStatusError as error:
        if error.status_code in NOT_MLFLOW_STATUS and error.error_code is None:
            text = (
                f"{url} answered {error.status_code} for {error.request}: is this an MLflow "
                "tracking server?"
            )
            return [Finding(name, False, text)]
        return [Finding(name, False, f"{url}: {error}")]
    except TbmirrorError as error:
        return [Finding(name, False, f"{url}: {error}")]
    finally:
        source.close()
    listed = ", ".join(
        sorted(
            e.name + (f" ({selected.get(e.experiment_id, 0)} runs selected)" if selected else "")
            for e in experiments.values()
        )
    )
    auth = settings.auth.type if settings.auth else "none"
    artifacts = source.settings.artifacts.store if settings.artifacts.enabled else "off"
    text = (
        f"{url} (auth {auth}, artifacts {artifacts}, {len(visible)} experiments visible): "
        f"experiments {listed or 'none'}"
    )
    missing.sort(key=settings.experiments.index)  # in the file's order
    return [Finding(name, True, text), *(_missing(name, m, visible) for m in missing)]


def _missing(source: str, experiment: str, visible: list[str]) -> Finding:
    """A configured experiment name or glob that matches no (active) experiment."""
    if any(character in experiment for character in "*?["):
        text = f"experiments {experiment!r}: the pattern matches no experiment"
    else:
        text = f"experiment {experiment!r} not found (or deleted)"
    close = difflib.get_close_matches(experiment, visible, n=1, cutoff=0.6)
    return Finding(source, False, text + (f"; did you mean {close[0]!r}?" if close else ""))


def _selected_per_experiment(source: MlflowSource) -> dict[str, int]:
    """How many runs (children included) of each experiment the selection takes now."""
    listing = source.list_runs()
    selected = Selection(source.settings, time.time).apply(listing.runs, True, ())
    return Counter(run.experiment_id for run in selected.runs if not run.deleted)
