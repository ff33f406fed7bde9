"""The settings of an `mlflow` source (and its `artifacts` section)."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Literal, Self

import msgspec
from msgspec import Meta

from tbmirror.config.auth import Auth
from tbmirror.config.base import Section, TaggedSection
from tbmirror.config.values import (
    DEFAULT_MAX_FILE_SIZE,
    INT64_MAX,
    ByteSize,
    Duration,
    HttpUrl,
    OneLine,
    PositiveDuration,
    RunStatus,
    SourceName,
    azureml_workspace,
    is_glob,
    without_userinfo,
)

RequestRate = Annotated[float, Meta(ge=0.001, le=1e6)]  # requests per second


class ArtifactFolders(list[str]):
    """Folders below a run's root, without slashes around them, none inside another."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
            raise ValueError("expected a list of folders")
        folders = cls()
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


class MediaSize(ByteSize):
    """An image is one record of the mirror's events files, whose records stop at 64 MiB."""

    maximum = 48 * 1024**2


class ArtifactSettings(Section, frozen=True):
    """What of MLflow runs' artifacts is mirrored into the run's directory: tfevents files
    (tailed), images and figures (the images dashboard), tables (the text dashboard)."""

    enabled: Annotated[
        bool,
        Meta(description="Look at the runs' artifacts at all (tfevents files, images, tables)."),
    ] = True
    store: Annotated[
        Literal["auto", "mlflow", "azureml", "databricks"],
        Meta(
            description="Where artifacts are read: `mlflow` (the server's `/get-artifact`), "
            "`azureml` or `databricks`. `auto` picks `azureml` for an Azure ML workspace's "
            "tracking URI or `azure` auth, `databricks` for `databricks` auth, else `mlflow`."
        ),
    ] = "auto"
    paths: Annotated[
        ArtifactFolders,
        Meta(
            description="Folders listed below a run's root (e.g. `[logs]`); empty: the whole "
            "run. Bounds the listing cost of runs with many artifacts."
        ),
    ] = msgspec.field(default_factory=ArtifactFolders)
    pattern: Annotated[
        str,
        Meta(description="fnmatch pattern on an artifact's file name: what is tailed as tfevents."),
    ] = "*tfevents*"
    max_depth: Annotated[
        int, Meta(ge=0, le=16, description="Folder levels listed below a run's root.")
    ] = 3
    max_listed: Annotated[
        int,
        Meta(
            ge=1,
            le=10_000_000,
            description="Entries listed per run; a run with more fails with an error naming "
            "this limit (the other runs go on).",
        ),
    ] = 10_000
    max_file_size: Annotated[
        ByteSize, Meta(description="Larger tfevents artifacts are skipped with a warning.")
    ] = ByteSize(DEFAULT_MAX_FILE_SIZE)
    batch: Annotated[
        int,
        Meta(
            ge=0,
            le=INT64_MAX,
            description="The daemon lists the artifacts of at most this many finished runs "
            "never looked at per pass (`tbmirror sync` looks at all).",
        ),
    ] = 100
    images: Annotated[
        bool,
        Meta(description="Show `log_image` series, figures and other PNG/JPEG/GIF artifacts."),
    ] = True
    tables: Annotated[bool, Meta(description="Show `log_table` JSON tables as Markdown text.")] = (
        True
    )
    max_images: Annotated[
        int,
        Meta(
            ge=0,
            le=100_000,
            description="Figures (images outside `images/`) shown per run; the rest are left "
            "out with one warning.",
        ),
    ] = 50
    max_media_size: Annotated[
        MediaSize,
        Meta(
            description="A larger image or table is skipped with one warning (at most 48 MiB: "
            "an image is one record of the mirror's events files, whose records stop at 64 MiB)."
        ),
    ] = MediaSize(16 * 1024**2)
    table_rows: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="A table shows its last this many rows, with a note counting the rest.",
        ),
    ] = 100

    def __post_init__(self) -> None:
        for folder in self.paths:
            if folder.count("/") + 1 > self.max_depth:
                raise ValueError(
                    f"paths: {folder!r} is deeper than max_depth ({self.max_depth}): "
                    "nothing in it would be listed"
                )


class MlflowSourceSettings(TaggedSection, tag="mlflow", frozen=True):
    """An MLflow tracking server (or anything speaking its REST API) to poll."""

    name: Annotated[
        SourceName, Meta(description="The source's name: the first path component under the root.")
    ]
    tracking_uri: Annotated[
        HttpUrl,
        Meta(
            description="http(s) base URL of the tracking server (`azureml://` as Azure prints "
            "it is read as `https://`)."
        ),
    ]
    experiments: Annotated[
        list[str],
        Meta(
            min_length=1,
            description='Experiment names, fnmatch globs (`"team-*"`, resolved at each full '
            'listing) or `"*"` for all.',
        ),
    ]
    poll_interval: Annotated[PositiveDuration, Meta(description="How often the daemon polls.")] = (
        PositiveDuration(10.0)
    )
    full_listing_interval: Annotated[
        Duration,
        Meta(
            description="How long after a full listing ends the daemon lists every run again, "
            "which sees deletions, renames and finished runs; between full listings it lists "
            "only running, new and just-finished runs."
        ),
    ] = Duration(600.0)
    reconcile_interval: Annotated[
        Duration,
        Meta(
            description="Re-check every series of a running run this often, and of a finished "
            "run once, this long after it ended (catches points MLflow's latest value cannot "
            "reveal)."
        ),
    ] = Duration(600.0)
    reconcile_batch: Annotated[
        int,
        Meta(ge=0, le=INT64_MAX, description="At most this many due runs re-checked per pass."),
    ] = 20
    on_delete: Annotated[
        Literal["remove", "keep"],
        Meta(description="What happens to the mirror of a run deleted in MLflow."),
    ] = "remove"
    child_runs_in_other_experiments: Annotated[
        bool,
        Meta(description="Follow child runs logged into another experiment than their parent's."),
    ] = True
    ui_url: Annotated[
        HttpUrl | None,
        Meta(
            description="Base URL of the MLflow UI for the links back to runs. Unset: "
            "`tracking_uri`."
        ),
    ] = None
    timeout: Annotated[
        PositiveDuration,
        Meta(
            description="Total per HTTP request: connecting, waiting and every byte of the answer."
        ),
    ] = PositiveDuration(30.0)
    max_response_bytes: Annotated[
        ByteSize, Meta(description="A larger answer is an error (nothing past it is read).")
    ] = ByteSize(64 * 1024**2)
    stall_timeout: Annotated[
        PositiveDuration,
        Meta(
            description="Once no request has been answered for this long, retries stop and the "
            "pass ends."
        ),
    ] = PositiveDuration(300.0)
    max_retries: Annotated[
        int,
        Meta(
            ge=0,
            le=20,
            description="Retries of 429, 5xx and connection errors (jittered backoff, "
            "`Retry-After` honoured).",
        ),
    ] = 5
    concurrency: Annotated[
        int, Meta(ge=1, le=32, description="Metric history requests in flight.")
    ] = 4
    auth: Annotated[
        Auth | None,
        Meta(
            description="How to authenticate: one of the `auth` sections below (`type: basic`, "
            "`bearer`, `databricks` or `azure`). Unset: no authentication."
        ),
    ] = None
    max_requests_per_second: Annotated[
        RequestRate | None,
        Meta(
            description="Client-side rate limit. Unset: none (127 with `databricks` auth).",
        ),
    ] = None
    max_search_requests_per_second: Annotated[
        RequestRate | None,
        Meta(
            description="The same, for search and experiment calls. Unset: "
            "`max_requests_per_second` (7 with `databricks` auth).",
        ),
    ] = None
    artifacts: Annotated[
        ArtifactSettings,
        Meta(description="What of the runs' artifacts is mirrored (the `artifacts` keys below)."),
    ] = msgspec.field(default_factory=ArtifactSettings)
    filter: Annotated[
        OneLine,
        Meta(
            description="An MLflow search filter for top-level runs, evaluated by the server "
            "(`tags.team = 'vision' and metrics.val_acc > 0.8`); child runs follow their parent."
        ),
    ] = OneLine("")
    run_statuses: Annotated[
        list[RunStatus] | None,
        Meta(description="Only top-level runs with one of these statuses. Unset: all."),
    ] = None
    max_age: Annotated[
        PositiveDuration | None,
        Meta(description="Finished top-level runs that ended longer ago than this leave (`30d`)."),
    ] = None
    max_runs: Annotated[
        Annotated[int, Meta(ge=1, le=INT64_MAX)] | None,
        Meta(
            description="Per experiment, only the most recent top-level runs by start time.",
        ),
    ] = None

    def __post_init__(self) -> None:
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

    @property
    def run_link_base(self) -> str:
        """Base URL of the MLflow UI, for links back to runs (never with user:password@)."""
        return without_userinfo(self.ui_url or self.tracking_uri)
