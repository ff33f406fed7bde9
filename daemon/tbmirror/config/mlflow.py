"""The settings of an `mlflow` source (and its `artifacts` section)."""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from tbmirror.config.auth import Auth
from tbmirror.config.base import Section
from tbmirror.config.values import (
    DEFAULT_MAX_FILE_SIZE,
    Duration,
    RunStatus,
    SourceName,
    azureml_workspace,
    http_url,
    is_glob,
    without_userinfo,
)


class ArtifactSettings(Section):
    """What of MLflow runs' artifacts is mirrored into the run's directory: tfevents files
    (tailed), images and figures (the images dashboard), tables (the text dashboard)."""

    enabled: bool = Field(
        default=True,
        description="Look at the runs' artifacts at all (tfevents files, images, tables).",
    )
    store: Literal["auto", "mlflow", "azureml", "databricks"] = Field(
        default="auto",
        description="Where artifacts are read: `mlflow` (the server's `/get-artifact`), "
        "`azureml` or `databricks`. `auto` picks `azureml` for an Azure ML workspace's "
        "tracking URI or `azure` auth, `databricks` for `databricks` auth, else `mlflow`.",
    )
    paths: list[str] = Field(
        default=[],
        description="Folders listed below a run's root (e.g. `[logs]`); empty: the whole run. "
        "Bounds the listing cost of runs with many artifacts.",
    )
    pattern: str = Field(
        default="*tfevents*",
        description="fnmatch pattern on an artifact's file name: what is tailed as tfevents.",
    )
    max_depth: int = Field(
        default=3, ge=0, le=16, description="Folder levels listed below a run's root."
    )
    max_listed: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Entries listed per run; a run with more fails with an error naming this "
        "limit (the other runs go on).",
    )
    max_file_size: ByteSize = Field(
        default=ByteSize(DEFAULT_MAX_FILE_SIZE),
        description="Larger tfevents artifacts are skipped with a warning.",
    )
    batch: int = Field(
        default=100,
        ge=0,
        description="The daemon lists the artifacts of at most this many finished runs never "
        "looked at per pass (`tbmirror sync` looks at all).",
    )
    images: bool = Field(
        default=True,
        description="Show `log_image` series, figures and other PNG/JPEG/GIF artifacts.",
    )
    tables: bool = Field(default=True, description="Show `log_table` JSON tables as Markdown text.")
    max_images: int = Field(
        default=50,
        ge=0,
        le=100_000,
        description="Figures (images outside `images/`) shown per run; the rest are left out "
        "with one warning.",
    )
    max_media_size: ByteSize = Field(
        default=ByteSize(16 * 1024**2),
        le=48 * 1024**2,  # an image is one record: well under the mirror's record ceiling
        description="A larger image or table is skipped with one warning (at most 48 MiB: an "
        "image is one record of the mirror's events files, whose records stop at 64 MiB).",
    )
    table_rows: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="A table shows its last this many rows, with a note counting the rest.",
    )

    @field_validator("paths")
    @classmethod
    def _relative_folders(cls, value: list[str]) -> list[str]:
        folders = []
        for path in value:
            folder = path.strip("/")
            parts = folder.split("/")
            if not folder or any(part in ("", ".", "..") or part != part.strip() for part in parts):
                raise ValueError("expected folders below the run's root, like 'logs' or 'tb/train'")
            if not folder.isprintable():
                raise ValueError("expected folders without control characters")
            folders.append(folder)
        for folder in folders:
            if any(other != folder and folder.startswith(f"{other}/") for other in folders):
                raise ValueError(f"{folder!r} is inside another folder listed: list it once")
        if len(set(folders)) != len(folders):
            raise ValueError("a folder is listed twice")
        return folders

    @model_validator(mode="after")
    def _folders_within_depth(self) -> ArtifactSettings:
        for folder in self.paths:
            if folder.count("/") + 1 > self.max_depth:
                raise ValueError(
                    f"paths: {folder!r} is deeper than max_depth ({self.max_depth}): "
                    "nothing in it would be listed"
                )
        return self


class MlflowSourceSettings(Section):
    """An MLflow tracking server (or anything speaking its REST API) to poll."""

    name: SourceName = Field(
        description="The source's name: the first path component under the root."
    )
    type: Literal["mlflow"] = Field(description="`mlflow`.")
    tracking_uri: str = Field(
        description="http(s) base URL of the tracking server (`azureml://` as Azure prints it "
        "is read as `https://`)."
    )
    experiments: list[str] = Field(
        min_length=1,
        description='Experiment names, fnmatch globs (`"team-*"`, resolved at each full '
        'listing) or `"*"` for all.',
    )
    poll_interval: Duration = Field(default=10.0, description="How often the daemon polls.")
    full_listing_interval: Duration = Field(
        default=600.0,
        description="How often the daemon lists every run, which sees deletions, renames and "
        "finished runs; between full listings it lists only running, new and just-finished runs.",
    )
    reconcile_interval: Duration = Field(
        default=600.0,
        description="Re-check every series of a running run this often, and of a finished run "
        "once, this long after it ended (catches points MLflow's latest value cannot reveal).",
    )
    reconcile_batch: int = Field(
        default=20, ge=0, description="At most this many due runs re-checked per pass."
    )
    on_delete: Literal["remove", "keep"] = Field(
        default="remove", description="What happens to the mirror of a run deleted in MLflow."
    )
    child_runs_in_other_experiments: bool = Field(
        default=True,
        description="Follow child runs logged into another experiment than their parent's.",
    )
    ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI for the links back to runs. Unset: `tracking_uri`.",
    )
    timeout: Duration = Field(
        default=30.0,
        description="Total per HTTP request: connecting, waiting and every byte of the answer.",
    )
    max_response_bytes: ByteSize = Field(
        default=ByteSize(64 * 1024**2),
        description="A larger answer is an error (nothing past it is read).",
    )
    stall_timeout: Duration = Field(
        default=300.0,
        description="Once no request has been answered for this long, retries stop and the "
        "pass ends.",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries of 429, 5xx and connection errors (jittered backoff, "
        "`Retry-After` honoured).",
    )
    concurrency: int = Field(
        default=4, ge=1, le=32, description="Metric history requests in flight."
    )
    auth: Auth | None = Field(
        default=None,
        description="How to authenticate: one of the `auth` sections below (`type: basic`, "
        "`bearer`, `databricks` or `azure`). Unset: no authentication.",
    )
    max_requests_per_second: float | None = Field(
        default=None,
        ge=0.001,
        le=1e6,
        description="Client-side rate limit. Unset: none (127 with `databricks` auth).",
    )
    max_search_requests_per_second: float | None = Field(
        default=None,
        ge=0.001,
        le=1e6,
        description="The same, for search and experiment calls. Unset: "
        "`max_requests_per_second` (7 with `databricks` auth).",
    )
    artifacts: ArtifactSettings = Field(
        default=ArtifactSettings(),
        description="What of the runs' artifacts is mirrored (the `artifacts` keys below).",
    )
    filter: str = Field(
        default="",
        description="An MLflow search filter for top-level runs, evaluated by the server "
        "(`tags.team = 'vision' and metrics.val_acc > 0.8`); child runs follow their parent.",
    )
    run_statuses: list[RunStatus] | None = Field(
        default=None,
        description="Only top-level runs with one of these statuses. Unset: all.",
    )
    max_age: Duration | None = Field(
        default=None,
        description="Finished top-level runs that ended longer ago than this leave (`30d`).",
    )
    max_runs: int | None = Field(
        default=None,
        ge=1,
        description="Per experiment, only the most recent top-level runs by start time.",
    )

    @field_validator("filter")
    @classmethod
    def _one_line_filter(cls, value: str) -> str:
        if any(character in value for character in "\r\n\0"):
            raise ValueError("expected one line (no CR, LF or NUL)")
        return value.strip()

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("expected a duration greater than 0")
        return value

    @field_validator("tracking_uri", "ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @field_validator("poll_interval", "timeout", "stall_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration greater than 0")
        return value

    @property
    def all_experiments(self) -> bool:
        """True when the source mirrors every experiment ("*")."""
        return "*" in self.experiments

    @property
    def experiment_globs(self) -> list[str]:
        """Experiment names given as fnmatch patterns (`team-*`; "*" is `all_experiments`)."""
        return [name for name in self.experiments if name != "*" and is_glob(name)]

    def covers(self, experiment_name: str) -> bool:
        """Whether the experiment of that name is configured (by name, glob or "*")."""
        return (
            self.all_experiments
            or experiment_name in self.experiments
            or any(fnmatch.fnmatchcase(experiment_name, g) for g in self.experiment_globs)
        )

    @property
    def selective(self) -> bool:
        """Whether anything narrows the runs of the configured experiments."""
        return bool(self.filter) or any(
            value is not None for value in (self.run_statuses, self.max_age, self.max_runs)
        )

    @model_validator(mode="after")
    def _azureml_workspace(self) -> MlflowSourceSettings:
        artifacts = self.artifacts
        if (
            artifacts.enabled
            and artifacts.store == "azureml"
            and not azureml_workspace(self.tracking_uri)
        ):
            raise ValueError(
                "artifacts.store: azureml needs the workspace's tracking_uri (azureml://<region>"
                ".api.azureml.ms/mlflow/v1.0/subscriptions/<id>/resourceGroups/<group>/providers"
                "/Microsoft.MachineLearningServices/workspaces/<name>)"
            )
        return self

    @property
    def run_link_base(self) -> str:
        """Base URL of the MLflow UI, for links back to runs (never with user:password@)."""
        return without_userinfo(self.ui_url or self.tracking_uri)
