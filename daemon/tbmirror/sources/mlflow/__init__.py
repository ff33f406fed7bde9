"""The MLflow source: run listings, metric histories and artifacts over MLflow's REST API (no
mlflow package).

- client.py: typed calls to the REST endpoints, and the runs and points their answers describe;
- listing.py: the configured experiments and their runs, page by page (`RunListing`);
- history.py: series past their cursors, and the cursor rule that keeps them exact (`History`);
- artifacts.py: MLflow's artifact store, and listing and reading runs' files through any store;
- source.py: `MlflowSource`, the four together for one configured source.
"""

from tbmirror.sources.mlflow.client import NOTE_TAG, PARENT_TAG, RUN_NAME_TAG, RunState
from tbmirror.sources.mlflow.history import History, HistoryRequest, Pages, SeriesChangedError
from tbmirror.sources.mlflow.listing import RunListing, SelectionError
from tbmirror.sources.mlflow.source import MlflowSource

__all__ = [
    "NOTE_TAG",
    "PARENT_TAG",
    "RUN_NAME_TAG",
    "History",
    "HistoryRequest",
    "MlflowSource",
    "Pages",
    "RunListing",
    "RunState",
    "SelectionError",
    "SeriesChangedError",
]
