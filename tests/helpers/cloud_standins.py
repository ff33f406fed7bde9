"""Stand-ins for two cloud services no test can reach: an Azure ML workspace and a Databricks
workspace, each an HTTP server on a free port of 127.0.0.1 in front of a real `mlflow server`,
with the runs' artifacts as blobs in a real Azurite (helpers/azurite.py).

Common to both (`AzureMlWorkspace`, `DatabricksWorkspace`):

- MLflow REST calls (`/api/2.0/mlflow/...`, `/ajax-api/...`; any method, body and query) are
  forwarded to the real server, except the artifact calls, which the stand-in answers itself from
  Azurite. In forwarded JSON answers, runs' `artifact_uri` (and, on Databricks, experiments'
  `artifact_location`) are rewritten to what the cloud service shows.
- Every request needs `Authorization: Bearer <token>`; otherwise 401 (the service's error shape).
- `requests`: (method, path without query string) of every request that arrived, in order, 401s
  included (appended under a lock; take `list(...)` of it to read a snapshot).
- Knobs, plain attributes changed at any time: `page_size` (entries per listing page, default 2 so
  that paging is exercised), `sas_ttl` (seconds a handed-out SAS URL is valid, default 3600),
  `bad_signature` (hand out SAS URLs signed with a wrong key: Azurite answers 403),
  `bad_signature_runs` (a set of run ids: the same for those runs' artifacts only, as if their
  signing were revoked),
  `storage_origin` (hand out SAS URLs on this scheme://host:port instead of Azurite's, e.g. a
  HostileProxy in front of it: the signature does not cover the host).
- Paging tokens are opaque: the last path of the page (base64), so a listing resumes after it even
  if files were added in between.
- `put(...)` uploads a whole blob (overwriting it: how both services re-upload a growing file).
- Use as a context manager, or call `close()`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode

import httpx
from azure.core.exceptions import ResourceNotFoundError

from helpers.azurite import Azurite

MLFLOW_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/")
# Headers of the client's request that reach the mlflow server.
FORWARDED_HEADERS = ("content-type", "accept")
# Forwarded answers that hold one of these are rewritten (see `_StandIn._rewrite_uris`).
REWRITTEN_KEYS = (b'"artifact_uri"', b'"artifact_location"')


@dataclass
class Answer:
    """One HTTP answer of a stand-in."""

    status: int
    body: bytes
    content_type: str = "application/json"


def json_answer(status: int, document: Any) -> Answer:
    return Answer(status, json.dumps(document).encode())


def page_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def after_token(token: str | None) -> str | None:
    """The last path of the previous page, from its token (None: the first page)."""
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(f"bad page token {token!r}") from error


def msrest_iso(moment: datetime) -> str:
    """A time as msrest serializes an `iso-8601` field (so models round-trip exactly)."""
    utc = moment.astimezone(UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0").ljust(3, "0")
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{fraction}Z"


class _StandIn(ABC):
    """What both stand-ins share: the server, authentication, forwarding, the record."""

    public_paths: frozenset[str] = frozenset()  # served without a token

    def __init__(self, mlflow_url: str, azurite: Azurite, token: str, container: str) -> None:
        self.mlflow_url = mlflow_url.rstrip("/")
        self.azurite = azurite
        self.token = token
        self.container = container
        self.page_size = 2
        self.sas_ttl = 3600.0
        self.bad_signature = False
        self.bad_signature_runs: set[str] = set()
        self.storage_origin: str | None = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}  # run id -> experiment id
        self._mlflow = httpx.Client(base_url=self.mlflow_url, timeout=60)
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() returns this quickly
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()

    # -- what subclasses provide -----------------------------------------------------------------

    @abstractmethod
    def _route(self, method: str, path: str, query: str, body: bytes, headers: Any) -> Answer:
        """The answer to a request that is not forwarded to the mlflow server."""

    @abstractmethod
    def _error(self, status: int, code: str, message: str) -> Answer:
        """An error in the service's own shape."""

    @abstractmethod
    def _artifact_uri(self, experiment_id: str, run_id: str) -> str:
        """A run's `artifact_uri` as the service shows it."""

    def _artifact_location(self, experiment_id: str) -> str | None:
        """An experiment's `artifact_location` as the service shows it (None: left as is)."""
        return None

    # -- shared ----------------------------------------------------------------------------------

    def _serve(self, method: str, target: str, headers: Any, body: bytes) -> Answer:
        path, _, query = target.partition("?")
        with self._lock:
            self.requests.append((method, path))
        if path not in self.public_paths and headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "UNAUTHENTICATED", "missing or invalid bearer token")
        return self._route(method, path, query, body, headers)

    def forward(
        self, method: str, path: str, query: str = "", body: bytes = b"", headers: Any = None
    ) -> Answer:
        """`method path?query` answered by the mlflow server, run artifact URIs rewritten."""
        sent = {k: v for k, v in (headers or {}).items() if k.lower() in FORWARDED_HEADERS}
        response = self._mlflow.request(
            method, f"{path}?{query}" if query else path, content=body, headers=sent
        )
        content = response.content
        content_type = response.headers.get("content-type", "application/json")
        if (
            response.is_success
            and "json" in content_type
            and any(key in content for key in REWRITTEN_KEYS)
        ):
            content = json.dumps(self._rewrite_uris(response.json())).encode()
        return Answer(response.status_code, content, content_type)

    def _rewrite_uris(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._rewrite_uris(item) for item in value]
        if not isinstance(value, dict):
            return value
        result = {key: self._rewrite_uris(item) for key, item in value.items()}
        if {"run_id", "experiment_id", "artifact_uri"} <= result.keys():
            result["artifact_uri"] = self._artifact_uri(result["experiment_id"], result["run_id"])
        if {"experiment_id", "artifact_location"} <= result.keys():
            location = self._artifact_location(result["experiment_id"])
            if location is not None:
                result["artifact_location"] = location
        return result

    def experiment_of(self, run_id: str) -> str | Answer:
        """The experiment id of a run (asked of the mlflow server once), or its error answer."""
        with self._lock:
            known = self._experiments.get(run_id)
        if known is not None:
            return known
        answer = self.forward("GET", "/api/2.0/mlflow/runs/get", urlencode({"run_id": run_id}))
        if answer.status != 200:
            return answer
        experiment_id = str(json.loads(answer.body)["run"]["info"]["experiment_id"])
        with self._lock:
            self._experiments[run_id] = experiment_id
        return experiment_id

    def blobs(self, prefix: str) -> list[Any]:
        """Azurite's BlobProperties of the blobs under `prefix`, by name."""
        container = self.azurite.service.get_container_client(self.container)
        try:
            return sorted(container.list_blobs(name_starts_with=prefix), key=lambda b: b.name)
        except ResourceNotFoundError:
            return []

    def blob_exists(self, name: str) -> bool:
        return bool(self.azurite.service.get_blob_client(self.container, name).exists())

    def sas_url(self, run_id: str, name: str) -> str:
        """A read SAS URL of blob `name` (an artifact of run `run_id`), as the knobs say."""
        bad = self.bad_signature or run_id in self.bad_signature_runs
        url = self.azurite.sas_url(self.container, name, self.sas_ttl, bad_signature=bad)
        if self.storage_origin is None:
            return url
        return self.storage_origin + url.removeprefix(self.azurite.origin)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._mlflow.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class AzureMlWorkspace(_StandIn):
    """Stands in for an Azure ML workspace (no test can reach one): its MLflow endpoint and its
    run-history artifact service, wire format from `azureml-mlflow==1.62.0.post6` (its generated
    `_restclient/run_artifact`; tests/test_cloud_standins.py checks every answer against those
    models).

    - `tracking_uri`: `<url>/mlflow/v1.0<workspace path>`; `<tracking_uri>/api/2.0/mlflow/...` and
      `.../ajax-api/...` are forwarded with the prefix stripped. Runs' `artifact_uri` reads
      `azureml://127.0.0.1:P/mlflow/v2.0<workspace path>/experiments/<exp id>/runs/<id>/artifacts`.
    - A run's artifacts are blobs `ExperimentRun/dcid.<run id>/<path>` of Azurite container
      `azureml` (`blob_name`, `put`).
    - `history_url(experiment_id, run_id)`: the run's base, `<url>/history/v1.0<workspace path>/
      experimentids/<exp id>/runs/<run id>`, under which (GET only):
      - `artifacts[?continuationToken=]`: `PaginatedArtifactList`: `value` of `Artifact`
        (artifactId, origin `ExperimentRun`, container `dcid.<run id>`, path, etag, createdTime;
        no size, like the real service), `continuationToken` and `nextLink` (this URL with the
        token, the query kept); on the last page both are JSON null (the models allow null or
        absent).
      - `artifacts/path?path=<prefix>[&continuationToken=]`: the same, only paths equal to the
        prefix or under it as a directory (`logs` matches `logs` and `logs/x`, not `logs2/x`; a
        trailing `/` is ignored; no prefix: all).
      - `artifacts/contentinfo?path=<path>`: `ArtifactContentInformation` (contentUri: an
        Azurite read SAS URL valid `sas_ttl` s); 404 if no such artifact.
      - `artifacts/prefix/contentinfo?path=<prefix>[&continuationToken=]`:
        `PaginatedArtifactContentInformationList`, matched and paged like `artifacts/path`.
      - Errors are `ErrorResponse` documents (`error.code` UserError or AuthenticationError,
        `error.innerError.code` the cause: NotFoundError, BadArgument, MethodNotAllowed). The
        run must exist in that experiment (asked of the mlflow server), else 404.
      `experiments/<name>/...` (by experiment name) is not served (404).
    - Knob `linked_pages` (default False): each `nextLink` also carries `linked=1`, and a page
      asked for by `continuationToken` without it is refused (400 BadArgument): a client must
      follow `nextLink` as given, as azureml-mlflow does, not rebuild it from the token.
    """

    def __init__(
        self,
        mlflow_url: str,
        azurite: Azurite,
        token: str = "azureml-test-token",
        *,
        subscription_id: str = "00000000-0000-4000-8000-000000000000",
        resource_group: str = "tbmirror-rg",
        workspace: str = "tbmirror-ws",
    ) -> None:
        super().__init__(mlflow_url, azurite, token, container="azureml")
        self.workspace_path = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
        )
        self._mlflow_base = f"/mlflow/v1.0{self.workspace_path}"
        self.linked_pages = False
        self._history = re.compile(
            rf"/history/v1\.0{re.escape(self.workspace_path)}/experimentids/(?P<experiment>[^/]+)"
            r"/runs/(?P<run>[^/]+)/artifacts(?P<operation>|/path|/contentinfo|/prefix/contentinfo)"
        )

    @property
    def tracking_uri(self) -> str:
        return f"{self.url}{self._mlflow_base}"

    def history_url(self, experiment_id: str, run_id: str) -> str:
        return (
            f"{self.url}/history/v1.0{self.workspace_path}"
            f"/experimentids/{experiment_id}/runs/{run_id}"
        )

    @staticmethod
    def blob_name(run_id: str, path: str) -> str:
        return f"ExperimentRun/dcid.{run_id}/{path}"

    def put(self, run_id: str, path: str, data: bytes) -> None:
        """The run's artifact `path` is now `data` (uploaded whole, as Azure ML does)."""
        self.azurite.put(self.container, self.blob_name(run_id, path), data)

    def _artifact_uri(self, experiment_id: str, run_id: str) -> str:
        host = self.url.removeprefix("http://")
        return (
            f"azureml://{host}/mlflow/v2.0{self.workspace_path}"
            f"/experiments/{experiment_id}/runs/{run_id}/artifacts"
        )

    def _error(self, status: int, code: str, message: str) -> Answer:
        root, inner = ("AuthenticationError", None) if status == 401 else ("UserError", code)
        error: dict[str, Any] = {"code": root, "message": message}
        if inner is not None:
            error["innerError"] = {"code": inner}
        return json_answer(
            status,
            {
                "error": error,
                "correlation": {"operation": uuid.uuid4().hex, "request": uuid.uuid4().hex[:16]},
                "environment": "local",
                "location": "local",
                "time": msrest_iso(datetime.now(UTC)),
                "componentName": "run-history",
            },
        )

    def _route(self, method: str, path: str, query: str, body: bytes, headers: Any) -> Answer:
        if path.startswith(self._mlflow_base + "/"):
            inner = path.removeprefix(self._mlflow_base)
            if inner.startswith(MLFLOW_PREFIXES):
                return self.forward(method, inner, query, body, headers)
        match = self._history.fullmatch(path)
        if match is None:
            return self._error(404, "NotFoundError", f"no such endpoint: {path}")
        if method != "GET":
            return self._error(405, "MethodNotAllowed", f"{method} {path}")
        run_id = match["run"]
        experiment_id = self.experiment_of(run_id)
        if isinstance(experiment_id, Answer) or experiment_id != match["experiment"]:
            return self._error(404, "NotFoundError", f"run {run_id} not found in experiment")
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        operation = match["operation"]
        if operation == "/contentinfo":
            if not params.get("path"):
                return self._error(400, "BadArgument", "path is required")
            name = self.blob_name(run_id, params["path"])
            if not self.blob_exists(name):
                return self._error(404, "NotFoundError", f"no artifact {params['path']}")
            return json_answer(200, self._content_information(run_id, params["path"]))
        prefix = params.get("path", "").strip("/") if operation != "" else ""
        try:
            after = after_token(params.get("continuationToken"))
        except ValueError as error:
            return self._error(400, "BadArgument", str(error))
        if after is not None and self.linked_pages and params.get("linked") != "1":
            return self._error(400, "BadArgument", "a continuationToken without its nextLink")
        paths = [
            (blob.name.removeprefix(self.blob_name(run_id, "")), blob)
            for blob in self.blobs(self.blob_name(run_id, prefix))
        ]
        matching = [
            (artifact, blob)
            for artifact, blob in paths
            if not prefix or artifact == prefix or artifact.startswith(prefix + "/")
        ]
        remaining = [(a, b) for a, b in matching if after is None or a > after]
        page, more = remaining[: self.page_size], len(remaining) > self.page_size
        if operation == "/prefix/contentinfo":
            value = [self._content_information(run_id, artifact) for artifact, _ in page]
        else:
            value = [self._artifact(run_id, artifact, blob) for artifact, blob in page]
        token = page_token(page[-1][0]) if more else None
        next_link = None
        if token is not None:
            kept = {key: v for key, v in params.items() if key != "continuationToken"}
            kept |= {"linked": "1"} if self.linked_pages else {}
            next_link = f"{self.url}{path}?{urlencode({**kept, 'continuationToken': token})}"
        return json_answer(200, {"value": value, "continuationToken": token, "nextLink": next_link})

    def _artifact(self, run_id: str, path: str, blob: Any) -> dict[str, Any]:
        return {
            "artifactId": f"ExperimentRun/dcid.{run_id}/{path}",
            "origin": "ExperimentRun",
            "container": f"dcid.{run_id}",
            "path": path,
            "etag": blob.etag,
            "createdTime": msrest_iso(blob.creation_time),
        }

    def _content_information(self, run_id: str, path: str) -> dict[str, Any]:
        return {
            "contentUri": self.sas_url(run_id, self.blob_name(run_id, path)),
            "origin": "ExperimentRun",
            "container": f"dcid.{run_id}",
            "path": path,
        }


class DatabricksWorkspace(_StandIn):
    """Stands in for a Databricks workspace (no test can reach one): its MLflow REST API and its
    artifact credential service, wire format from mlflow's own client (mlflow 3.17:
    `store/artifact/databricks_artifact_repo*.py`, `protos/service.proto` ListArtifacts,
    `protos/databricks_artifacts.proto` GetCredentialsForRead). tests/test_cloud_standins.py drives
    mlflow's `DatabricksArtifactRepository` against it.

    - `host` (`http://127.0.0.1:P`): MLflow calls forwarded, runs' `artifact_uri` shown as
      `dbfs:/databricks/mlflow-tracking/<exp id>/<run id>/artifacts` and experiments'
      `artifact_location` as `dbfs:/databricks/mlflow-tracking/<exp id>`, except:
      - `GET .../mlflow/artifacts/list?run_id=&path=&page_token=`: one directory level from Azurite
        (container `databricks`, blobs `<exp id>/<run id>/artifacts/<path>`, `put`), sorted:
        `{"root_uri", "files": [{"path", "is_dir", "file_size" (files only, a JSON number)}],
        "next_page_token" (only if more)}`; like proto3 JSON, no `files` key when empty. A `path`
        naming a file lists that one file (what Databricks does; mlflow's client expects it).
      - `POST .../mlflow/artifacts/credentials-for-read` `{"run_id", "path": [paths],
        "page_token"}`: `{"credential_infos": [{"run_id", "path", "signed_uri" (an Azurite read
        SAS URL valid `sas_ttl` s), "type": "AZURE_SAS_URI"}], "next_page_token"}`, `page_size`
        paths per page; no `headers` key (none needed to read); like Databricks, it signs paths
        that do not exist (Azurite then answers 404).
      - Errors: `{"error_code", "message"}`; an unknown run: the mlflow server's own answer.
    - `GET /.well-known/databricks-config`, without a token (databricks-sdk 0.162 asks it,
      unauthenticated, whenever it builds a client; a 401 there makes it warn and carry on):
      `{"oidc_endpoint": "<host>/oidc", "workspace_id"}`, the fields the SDK reads (its
      `HostMetadata`); the SDK then sends `workspace_id` as `x-databricks-org-id`.
    - mlflow's own client talks to it over plain http with no extra setting: tracking URI
      `databricks` (`MLFLOW_TRACKING_URI`, or `mlflow.set_tracking_uri`: the repository reads the
      global one, not its `tracking_uri` argument), `DATABRICKS_HOST=<host>`,
      `DATABRICKS_TOKEN=<token>`; requests go through databricks-sdk's ApiClient
      (`MLFLOW_ENABLE_DB_SDK=false`: mlflow's own `requests` session; both work).
    """

    public_paths = frozenset({"/.well-known/databricks-config"})

    def __init__(
        self,
        mlflow_url: str,
        azurite: Azurite,
        token: str = "dapi-test-token",
        *,
        workspace_id: str = "1234567890123456",
    ) -> None:
        super().__init__(mlflow_url, azurite, token, container="databricks")
        self.workspace_id = workspace_id

    @property
    def host(self) -> str:
        return self.url

    @staticmethod
    def blob_name(experiment_id: str, run_id: str, path: str) -> str:
        return f"{experiment_id}/{run_id}/artifacts/{path}"

    def put(self, experiment_id: str, run_id: str, path: str, data: bytes) -> None:
        """The run's artifact `path` is now `data` (uploaded whole)."""
        self.azurite.put(self.container, self.blob_name(experiment_id, run_id, path), data)

    def _artifact_uri(self, experiment_id: str, run_id: str) -> str:
        return f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts"

    def _artifact_location(self, experiment_id: str) -> str | None:
        return f"dbfs:/databricks/mlflow-tracking/{experiment_id}"

    def _error(self, status: int, code: str, message: str) -> Answer:
        return json_answer(status, {"error_code": code, "message": message})

    def _route(self, method: str, path: str, query: str, body: bytes, headers: Any) -> Answer:
        if path == "/.well-known/databricks-config":
            return json_answer(
                200, {"oidc_endpoint": f"{self.host}/oidc", "workspace_id": self.workspace_id}
            )
        if not path.startswith(MLFLOW_PREFIXES):
            return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        endpoint = (method, path.split("/2.0/mlflow/", 1)[-1])
        if endpoint == ("GET", "artifacts/list"):
            return self._list(query)
        if endpoint == ("POST", "artifacts/credentials-for-read"):
            return self._credentials_for_read(body)
        return self.forward(method, path, query, body, headers)

    def _list(self, query: str) -> Answer:
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        run_id = params.get("run_id") or params.get("run_uuid")
        if not run_id:
            return self._error(400, "INVALID_PARAMETER_VALUE", "run_id is required")
        experiment_id = self.experiment_of(run_id)
        if isinstance(experiment_id, Answer):
            return experiment_id
        try:
            after = after_token(params.get("page_token"))
        except ValueError as error:
            return self._error(400, "INVALID_PARAMETER_VALUE", str(error))
        root = self.blob_name(experiment_id, run_id, "")
        target = params.get("path", "").strip("/")
        files: dict[str, dict[str, Any]] = {}
        if target and (file := [b for b in self.blobs(root + target) if b.name == root + target]):
            files[target] = {"path": target, "is_dir": False, "file_size": int(file[0].size)}
        else:
            directory = root + target + "/" if target else root
            for blob in self.blobs(directory):
                head, slash, _ = blob.name.removeprefix(directory).partition("/")
                entry = f"{target}/{head}" if target else head
                files[entry] = (
                    {"path": entry, "is_dir": True}
                    if slash
                    else {"path": entry, "is_dir": False, "file_size": int(blob.size)}
                )
        remaining = [files[p] for p in sorted(files) if after is None or p > after]
        page = remaining[: self.page_size]
        document: dict[str, Any] = {"root_uri": self._artifact_uri(experiment_id, run_id)}
        if page:
            document["files"] = page
        if len(remaining) > self.page_size:
            document["next_page_token"] = page_token(page[-1]["path"])
        return json_answer(200, document)

    def _credentials_for_read(self, body: bytes) -> Answer:
        try:
            request = json.loads(body or b"{}")
            run_id, paths = str(request["run_id"]), [str(p) for p in request.get("path", [])]
            start = int(request.get("page_token") or 0)
        except (ValueError, KeyError, TypeError) as error:
            return self._error(400, "INVALID_PARAMETER_VALUE", f"bad request: {error}")
        experiment_id = self.experiment_of(run_id)
        if isinstance(experiment_id, Answer):
            return experiment_id
        page = paths[start : start + self.page_size]
        infos = [
            {
                "run_id": run_id,
                "path": path,
                "signed_uri": self.sas_url(run_id, self.blob_name(experiment_id, run_id, path)),
                "type": "AZURE_SAS_URI",
            }
            for path in page
        ]
        document: dict[str, Any] = {"credential_infos": infos} if infos else {}
        if start + self.page_size < len(paths):
            document["next_page_token"] = str(start + self.page_size)
        return json_answer(200, document)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stand_in: _StandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stand_in = stand_in


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after close

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            answer = self.server.stand_in._serve(self.command, self.path, self.headers, body)
        except httpx.HTTPError as error:  # the mlflow server is down: what a gateway says
            answer = Answer(502, f"bad gateway: {error}".encode(), "text/plain")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass
