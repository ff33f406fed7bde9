"""A scripted MLflow tracking server inside the test process, at tbmirror's httpx transport seam.

This is a FAKE (allowed by the test standards at a seam): it answers the REST calls tbmirror
makes (grep `daemon/tbmirror/sources/` for the paths) the way `mlflow server` 3.x with its
sqlite store answers them, from plain Python state a test scripts. tests/test_scripted_mlflow.py
plays the same history against a real `mlflow server` and against this fake and compares what
tbmirror's client decodes, so the two cannot drift apart.

- `ScriptedMlflow.client()` logs like `mlflow.tracking.MlflowClient` (same method names and
  arguments, a subset): experiments, runs, metrics, params, tags, renames, deletions, artifacts.
- `ScriptedMlflow.transport` is the `httpx.MockTransport` to hand to tbmirror's `RestClient`
  (through `engine_for` / `source_for` below, the one place tests build engines with it).
- Served: `experiments/get-by-name`, `experiments/search`, `runs/search` (filters, order by
  start time, `max_results`, offset page tokens), `runs/get`, `metrics/get-history`,
  `ajax-api/.../metrics/get-history-bulk`, `artifacts/list`, the server's own store's listing
  (`mlflow-artifacts/artifacts?path=`, its runs' artifact roots being in it) and ranged
  `/get-artifact`.
- Hostile answers: `set(fault, path=..., times=..., **params)`, `clear()`, `requests` and
  `seen(path, fault)` work as `HostileProxy`'s (helpers/hostile_proxy.py, whose rules and
  records are reused) for the faults that need no TCP peer (`FAULTS` below); `reset`, `trickle`
  and `delay` stay with the real proxy.
"""

from __future__ import annotations

import base64
import json
import math
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import httpx

from helpers.hostile_proxy import FAULTS as PROXY_FAULTS
from helpers.hostile_proxy import INJECTED_TOKEN, LOGIN_PAGE, Rule, Seen

URL = "http://mlflow.scripted"
API = "/api/2.0/mlflow"
AJAX_API = "/ajax-api/2.0/mlflow"
ARTIFACT_ROOT = "mlflow-artifacts:/scripted"
SERVED_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# The faults answered here; the others need a real TCP peer (helpers/hostile_proxy.py).
FAULTS = {
    name: params
    for name, params in PROXY_FAULTS.items()
    if name not in ("reset", "trickle", "delay", "huge")
}


class Metric(NamedTuple):
    """A metric point as `mlflow.entities.Metric(key, value, timestamp, step)` takes it."""

    key: str
    value: float
    timestamp: int
    step: int


class Param(NamedTuple):
    key: str
    value: str


class RunTag(NamedTuple):
    key: str
    value: str


class ServerError(Exception):
    """An error answer of the server: MLflow's JSON error body with `error_code`."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _not_found(message: str) -> ServerError:
    return ServerError(404, "RESOURCE_DOES_NOT_EXIST", message)


def _invalid(message: str) -> ServerError:
    return ServerError(400, "INVALID_PARAMETER_VALUE", message)


@dataclass
class _Experiment:
    experiment_id: str
    name: str
    created: int
    lifecycle_stage: str = "active"

    def json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "artifact_location": f"{ARTIFACT_ROOT}/{self.experiment_id}",
            "lifecycle_stage": self.lifecycle_stage,
            "last_update_time": self.created,
            "creation_time": self.created,
        }


@dataclass
class _Run:
    run_id: str
    experiment_id: str
    start_time: int
    status: str = "RUNNING"
    end_time: int | None = None
    lifecycle_stage: str = "active"
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[Metric]] = field(default_factory=dict)
    logged: set[tuple[str, int, int, str]] = field(default_factory=set)  # `_identity`s
    artifacts: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", "")

    def latest(self) -> dict[str, Metric]:
        """Each key's point with the greatest (step, timestamp, value), as MLflow keeps it."""
        return {
            key: max(points, key=lambda p: (p.step, p.timestamp, _sortable(p.value)))
            for key, points in self.history.items()
            if points
        }

    def json(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "run_uuid": self.run_id,
            "run_id": self.run_id,
            "run_name": self.name,
            "experiment_id": self.experiment_id,
            "user_id": "scripted",
            "status": self.status,
            "start_time": self.start_time,
            "artifact_uri": f"{ARTIFACT_ROOT}/{self.experiment_id}/{self.run_id}/artifacts",
            "lifecycle_stage": self.lifecycle_stage,
        }
        if self.end_time is not None:
            info["end_time"] = self.end_time
        data = {
            "metrics": [_metric_json(point) for point in self.latest().values()],
            "params": [{"key": k, "value": v} for k, v in self.params.items()],
            "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
        }
        return {"info": info, "data": {k: v for k, v in data.items() if v}, "inputs": {}}


def _sortable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _metric_json(point: Metric, run_id: str | None = None) -> dict[str, Any]:
    value: float | str = point.value
    if math.isnan(point.value):
        value = "NaN"
    elif math.isinf(point.value):
        value = "Infinity" if point.value > 0 else "-Infinity"
    found = {"key": point.key, "value": value, "timestamp": point.timestamp, "step": point.step}
    return found | ({"run_id": run_id} if run_id else {})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _token(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.b64decode(token))["offset"]
    except (ValueError, KeyError, TypeError):
        raise _invalid("Invalid page token, could not base64-decode") from None
    if not isinstance(offset, int) or offset < 0:
        raise _invalid(f"Invalid page token, offset {offset!r}")
    return offset


def _page(items: list[Any], offset: int, size: int) -> tuple[list[Any], str | None]:
    """MLflow's offset paging: a token only when more items follow."""
    page = items[offset : offset + size]
    return page, _token(offset + size) if len(items) > offset + size else None


class ScriptedMlflow:
    """The fake server (see the module docstring). Thread-safe: tbmirror asks from several
    threads while a test logs from its own."""

    url = URL

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._experiments: dict[str, _Experiment] = {}
        self._runs: dict[str, _Run] = {}
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self.last_start = 0  # the latest start time given to a run created without one
        self.transport = httpx.MockTransport(self._handle)
        self._add_experiment("Default")

    def client(self) -> ScriptedClient:
        return ScriptedClient(self)

    # -- faults and records (HostileProxy's API) ----------------------------------------------

    def set(
        self, fault: str, path: str | None = None, times: int | None = None, **params: Any
    ) -> Rule:
        """Switch `fault` on for requests whose target (path and query) matches `path`."""
        if fault not in FAULTS:
            raise ValueError(
                f"{fault!r} is not a fault the scripted server answers ({', '.join(FAULTS)}); "
                "faults of the connection need HostileProxy"
            )
        unknown = set(params) - FAULTS[fault]
        if unknown:
            raise ValueError(f"{fault} takes {sorted(FAULTS[fault])}, not {sorted(unknown)}")
        rule = Rule(fault, re.compile(path) if path is not None else None, times, params)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self._rules:
                rule.active = False
            self._rules = []

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def seen(self, path: str, fault: str | bool | None = True) -> list[Seen]:
        """Requests whose target matches `path`; with `fault` a name (None: none), only those."""
        pattern = re.compile(path)
        return [
            s
            for s in self.requests
            if pattern.search(s.target) and (fault is True or s.fault == fault)
        ]

    # -- state --------------------------------------------------------------------------------

    def _add_experiment(self, name: str) -> str:
        with self._lock:
            if any(e.name == name for e in self._experiments.values()):
                raise ServerError(
                    400, "RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists."
                )
            experiment_id = str(len(self._experiments))
            self._experiments[experiment_id] = _Experiment(experiment_id, name, _now_ms())
            return experiment_id

    def experiment(self, experiment_id: str) -> _Experiment:
        try:
            return self._experiments[str(experiment_id)]
        except KeyError:
            raise _not_found(f"No Experiment with id={experiment_id} exists") from None

    def run(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise _not_found(f"Run with id={run_id} not found") from None

    # -- the HTTP side ------------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        with self._lock:
            rule = next((r for r in self._rules if r.matches(target)), None)
            if rule is not None:
                rule.hits += 1
        seen = Seen(request.method, target, request.headers.get("Range"), rule and rule.fault)
        with self._lock:
            self._seen.append(seen)
        answer = self._faulty(request, rule) if rule else self._answer(request)
        seen.status, seen.bytes = answer.status_code, len(answer.content)
        return answer

    def _answer(self, request: httpx.Request, body: bytes | None = None) -> httpx.Response:
        """The server's own answer to `request` (with `body` instead of its body, if given)."""
        path, query = request.url.path, request.url.params
        try:
            with self._lock:
                if path == "/get-artifact":
                    return self._artifact(query, request.headers.get("Range"))
                if request.method == "POST":
                    payload = json.loads(request.content if body is None else body)
                    found = self._post(path, payload)
                else:
                    found = self._get(path, query)
        except ServerError as error:
            return httpx.Response(
                error.status, json={"error_code": error.error_code, "message": error.message}
            )
        return httpx.Response(200, json=found)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == f"{API}/runs/search":
            return self._search_runs(body)
        if path == f"{API}/experiments/search":
            every = sorted(self._experiments.values(), key=lambda e: int(e.experiment_id))
            view = body.get("view_type", "ACTIVE_ONLY")
            chosen = [e.json() for e in every if _in_view(e.lifecycle_stage, view)]
            page, token = _page(chosen, _offset(body.get("page_token")), body["max_results"])
            return _without_empty({"experiments": page, "next_page_token": token})
        raise ServerError(404, "ENDPOINT_NOT_FOUND", f"POST {path} is not served")

    def _get(self, path: str, query: httpx.QueryParams) -> dict[str, Any]:
        if path == f"{API}/experiments/get-by-name":
            name = query["experiment_name"]
            for experiment in self._experiments.values():
                if experiment.name == name:
                    return {"experiment": experiment.json()}
            raise _not_found(f"Could not find experiment with name '{name}'")
        if path == f"{API}/runs/get":
            return {"run": self.run(query["run_id"]).json()}
        if path == f"{API}/metrics/get-history":
            points = self._history(query["run_id"], query["metric_key"])
            size = int(query.get("max_results", len(points) or 1))
            page, token = _page(points, _offset(query.get("page_token")), size)
            return _without_empty({"metrics": [_metric_json(p) for p in page],
                                   "next_page_token": token})  # fmt: skip
        if path == f"{AJAX_API}/metrics/get-history-bulk":
            size = min(int(query.get("max_results", 25000)), 25000)
            found = [
                _metric_json(point, run_id)
                for run_id in sorted(query.get_list("run_id"))
                for point in self._history(run_id, query["metric_key"])[:size]
            ]
            return {"metrics": found[:size]}
        if path == f"{API}/artifacts/list":
            return self._list_artifacts(query["run_id"], query.get("path", ""))
        if path == SERVED_ARTIFACTS:
            return self._served_artifacts(query.get("path", ""))
        raise ServerError(404, "ENDPOINT_NOT_FOUND", f"GET {path} is not served")

    def _history(self, run_id: str, key: str) -> list[Metric]:
        points = self.run(run_id).history.get(key, [])
        return sorted(points, key=lambda p: (p.timestamp, p.step, _sortable(p.value)))

    def _search_runs(self, body: dict[str, Any]) -> dict[str, Any]:
        matches = _parse_filter(body.get("filter", ""))
        view = body.get("run_view_type", "ACTIVE_ONLY")
        experiment_ids = {str(e) for e in body.get("experiment_ids", [])}
        runs = [
            run
            for run in self._runs.values()
            if run.experiment_id in experiment_ids
            and _in_view(run.lifecycle_stage, view)
            and matches(run)
        ]
        order = body.get("order_by") or []
        if order not in ([], ["attributes.start_time ASC"]):
            raise _invalid(f"the scripted server orders by start time only, not {order}")
        runs.sort(key=lambda r: (-r.start_time, r.run_id))  # MLflow's default
        if order:
            runs.sort(key=lambda r: (r.start_time, r.run_id))
        size = body.get("max_results", 1000)
        page, token = _page(runs, _offset(body.get("page_token")), size)
        return _without_empty({"runs": [r.json() for r in page], "next_page_token": token})

    def _list_artifacts(self, run_id: str, folder: str) -> dict[str, Any]:
        run = self.run(run_id)
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, data in run.artifacts.items():
            if not path.startswith(prefix):
                continue
            name, *below = path[len(prefix) :].split("/", 1)
            entry = prefix + name
            if below:
                entries[entry] = {"path": entry, "is_dir": True}
            else:
                entries[entry] = {"path": entry, "is_dir": False, "file_size": len(data)}
        files = [entries[path] for path in sorted(entries)]
        root = f"{ARTIFACT_ROOT}/{run.experiment_id}/{run_id}/artifacts"
        return _without_empty({"root_uri": root, "files": files})

    def _served_artifacts(self, path: str) -> dict[str, Any]:
        """The store's listing of `path` (`scripted/<experiment>/<run>/artifacts[/<folder>]`):
        entries by name alone; a path that is no run's folder is an empty one."""
        found = re.fullmatch(r"scripted/([^/]+)/([^/]+)/artifacts(?:/(.*))?", path.strip("/"))
        run = self._runs.get(found.group(2)) if found else None
        if found is None or run is None or run.experiment_id != found.group(1):
            return {}
        listed = self._list_artifacts(run.run_id, found.group(3) or "")
        files = [
            entry | {"path": entry["path"].rsplit("/", 1)[-1]} for entry in listed.get("files", [])
        ]
        return _without_empty({"files": files})

    def _artifact(self, query: httpx.QueryParams, asked: str | None) -> httpx.Response:
        run = self.run(query.get("run_id") or query.get("run_uuid", ""))
        data = run.artifacts.get(query["path"])
        if data is None:
            raise _not_found(f"artifact {query['path']} not found")
        kind = "image/png" if query["path"].endswith(".png") else "application/octet-stream"
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", asked or "")
        if wanted is None:
            return httpx.Response(200, content=data, headers={"Content-Type": kind})
        start = int(wanted.group(1))
        end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
        if start >= len(data):
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
        return httpx.Response(
            206,
            content=data[start : end + 1],
            headers={"Content-Type": kind, "Content-Range": f"bytes {start}-{end}/{len(data)}"},
        )

    # -- faults -------------------------------------------------------------------------------

    def _faulty(self, request: httpx.Request, rule: Rule) -> httpx.Response:
        fault, params = rule.fault, rule.params
        if fault == "wrong_shape":
            body = params.get("body", {"message": "upstream busy"})
            return httpx.Response(params.get("status", 200), json=body)
        if fault == "html":
            return _html(params.get("status", 200), params.get("body", LOGIN_PAGE))
        if fault == "redirect":
            where = params.get("location") or f"https://sso.example.com/login?next={request.url}"
            answer = _html(params.get("status", 302), f"<a href='{where}'>{where}</a>")
            answer.headers["Location"] = where
            return answer
        if fault == "status":
            return _status(params)
        if fault == "small_pages":
            body = json.loads(request.content or b"{}")
            if isinstance(body.get("max_results"), int):
                body["max_results"] = min(body["max_results"], params.get("size", 2))
            return self._answer(request, json.dumps(body).encode())
        if fault == "repeat_token":
            with self._lock:
                if rule.page is None:
                    first = json.loads(self._answer(request).content)
                    first.setdefault("next_page_token", params.get("token") or INJECTED_TOKEN)
                    rule.page, rule.token = json.dumps(first).encode(), first["next_page_token"]
                return httpx.Response(200, content=rule.page, headers=_JSON)
        if fault == "short_body":
            whole = self._answer(httpx.Request("GET", request.url))
            keep = params.get("keep")
            cut = whole.content[: len(whole.content) // 2 if keep is None else keep]
            return httpx.Response(200, content=cut, headers={"Content-Type": "image/png"})
        return self._edited(request, fault, params)

    def _edited(self, request: httpx.Request, fault: str, params: dict[str, Any]) -> httpx.Response:
        """The real answer, its JSON page edited by `fault` (truncate_page, drop_runs,
        garble_metrics)."""
        answer = self._answer(request)
        page = json.loads(answer.content)
        runs = page.get("runs", [])
        if fault == "truncate_page":
            page.pop("next_page_token", None)
            if params.get("keep") is not None:
                page["runs"] = runs[: params["keep"]]
        elif fault == "drop_runs":
            hidden = set(params.get("run_ids", ()))
            page["runs"] = [run for run in runs if run["info"]["run_id"] not in hidden]
        else:  # garble_metrics
            for run in runs:
                if run["info"]["run_id"] in set(params.get("run_ids", ())):
                    run.setdefault("data", {})["metrics"] = [{"key": "m", "value": {"x": 1}}]
        return httpx.Response(answer.status_code, json=page)


_JSON = {"Content-Type": "application/json"}


def _html(status: int, page: str) -> httpx.Response:
    return httpx.Response(
        status, content=page.encode(), headers={"Content-Type": "text/html; charset=utf-8"}
    )


def _status(params: dict[str, Any]) -> httpx.Response:
    body, kind = params.get("body"), params.get("content_type")
    if body is None or isinstance(body, bytes):
        data, kind = body or b"", kind or "text/plain"
    elif isinstance(body, str):
        data = body.encode()
        kind = kind or ("text/html" if body.lstrip().startswith("<") else "text/plain")
    else:
        data, kind = json.dumps(body).encode(), kind or "application/json"
    headers = {"Content-Type": kind, **(params.get("headers") or {})}
    return httpx.Response(params.get("code", 503), content=data, headers=headers)


def _without_empty(page: dict[str, Any]) -> dict[str, Any]:
    """What proto3 JSON shows: empty lists and unset fields left out."""
    return {key: value for key, value in page.items() if value not in (None, [], "")}


def _in_view(stage: str, view: str) -> bool:
    return view == "ALL" or (stage == "deleted") == (view == "DELETED_ONLY")


# -- the search filter ------------------------------------------------------------------------

_CLAUSE = re.compile(
    r"""\s*(?P<entity>[A-Za-z_]+)\.(?P<key>`[^`]*`|"[^"]*"|[\w.]+?)\s*
    (?P<op>IS\s+NOT\s+NULL|IS\s+NULL|NOT\s+IN|IN|NOT\s+LIKE|LIKE|ILIKE|!=|<=|>=|=|<|>)\s*
    (?P<value>'[^']*'|"[^"]*"|\([^)]*\)|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)?
    \s*(?:(?P<more>AND)\s+|$)""",
    re.IGNORECASE | re.VERBOSE,
)
_ENTITIES = {
    "attribute": "attributes", "attributes": "attributes", "attr": "attributes",
    "run": "attributes", "metric": "metrics", "metrics": "metrics", "param": "params",
    "params": "params", "parameter": "params", "parameters": "params", "tag": "tags",
    "tags": "tags",
}  # fmt: skip
_STRING_ATTRIBUTES = {"run_id", "run_name", "status", "user_id", "artifact_uri"}
_NUMBER_ATTRIBUTES = {"start_time", "end_time", "created", "Created"}

Matcher = Callable[[_Run], bool]


def _parse_filter(text: str) -> Matcher:
    """MLflow's search syntax (comparisons joined by AND), as a predicate on a run; what MLflow
    would refuse is a 400 INVALID_PARAMETER_VALUE."""
    if not text.strip():
        return lambda run: True
    clauses, at = [], 0
    while at < len(text):
        found = _CLAUSE.match(text, at)
        valueless = found is not None and found["value"] is None
        if found is None or (valueless and "NULL" not in found["op"].upper()):
            raise _invalid(f"Invalid clause(s) in filter string: '{text[at:]}'")
        clauses.append(_clause(found))
        at = found.end()
        if found.group("more") is None and at < len(text):
            raise _invalid(f"Invalid filter string '{text}'")
    return lambda run: all(clause(run) for clause in clauses)


def _clause(found: re.Match[str]) -> Matcher:
    entity = _ENTITIES.get(found["entity"].lower())
    key, op = found["key"].strip('`"'), " ".join(found["op"].upper().split())
    raw = found["value"]
    if entity is None:
        raise _invalid(f"Invalid entity type '{found['entity']}'")
    if entity == "attributes" and key not in _STRING_ATTRIBUTES | _NUMBER_ATTRIBUTES:
        raise _invalid(f"Invalid attribute key '{key}' specified")
    numeric = entity == "metrics" or key in _NUMBER_ATTRIBUTES
    if op in ("IS NULL", "IS NOT NULL"):
        wanted: Any = None
    elif op in ("IN", "NOT IN"):
        wanted = [item.strip().strip("'\"") for item in raw[1:-1].split(",") if item.strip()]
    elif numeric:
        if raw[0] in "'\"":
            raise _invalid(f"Expected numeric value type for {entity[:-1]} key, got {raw}")
        wanted = float(raw)
    else:
        if raw[0] not in "'\"":
            raise _invalid(f"Expected a quoted string value for {entity}.{key}, got {raw}")
        wanted = raw[1:-1]

    def value_of(run: _Run) -> Any:
        if entity == "metrics":
            point = run.latest().get(key)
            return None if point is None else point.value
        if entity == "params":
            return run.params.get(key)
        if entity == "tags":
            return run.tags.get(key)
        return {"run_name": run.name, "created": run.start_time, "Created": run.start_time}.get(
            key, getattr(run, key, None)
        )

    return lambda run: _compare(value_of(run), op, wanted)


def _compare(value: Any, op: str, wanted: Any) -> bool:
    if op == "IS NULL":
        return value is None
    if op == "IS NOT NULL":
        return value is not None
    if value is None:
        return False
    if op in ("IN", "NOT IN"):
        return (value in wanted) == (op == "IN")
    if op in ("LIKE", "ILIKE", "NOT LIKE"):
        wild = {"%": ".*", "_": "."}
        pattern = "".join(wild.get(char, re.escape(char)) for char in wanted)
        hit = re.fullmatch(pattern, value, re.IGNORECASE if op == "ILIKE" else 0) is not None
        return hit != (op == "NOT LIKE")
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    }  # fmt: skip
    return compare[op](value, wanted)


# -- the logging side -------------------------------------------------------------------------


class ScriptedClient:
    """Logs into a ScriptedMlflow as `mlflow.tracking.MlflowClient` logs into a server (the
    methods tests use, with the same names and arguments)."""

    def __init__(self, server: ScriptedMlflow) -> None:
        self.server = server
        self.tracking_uri = server.url

    def create_experiment(self, name: str) -> str:
        return self.server._add_experiment(name)

    def get_experiment_by_name(self, name: str) -> SimpleNamespace | None:
        with self.server._lock:
            for experiment in self.server._experiments.values():
                if experiment.name == name:
                    return SimpleNamespace(**experiment.json())
        return None

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        with self.server._lock:
            self.server.experiment(experiment_id).name = new_name

    def delete_experiment(self, experiment_id: str) -> None:
        with self.server._lock:
            self.server.experiment(experiment_id).lifecycle_stage = "deleted"

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> SimpleNamespace:
        tags = dict(tags or {})
        with self.server._lock:
            self.server.experiment(experiment_id)
            name = run_name or tags.get("mlflow.runName") or f"run-{len(self.server._runs)}"
            if start_time is None:  # each a millisecond apart at least, as a real round trip is
                server = self.server
                start_time = server.last_start = max(_now_ms(), server.last_start + 1)
            run = _Run(uuid.uuid4().hex, str(experiment_id), start_time)
            run.tags = {**tags, "mlflow.runName": name}
            self.server._runs[run.run_id] = run
        return self.get_run(run.run_id)

    def get_run(self, run_id: str) -> SimpleNamespace:
        with self.server._lock:
            run = self.server.run(run_id)
            info = SimpleNamespace(**run.json()["info"])
            data = SimpleNamespace(
                metrics={k: p.value for k, p in run.latest().items()},
                params=dict(run.params),
                tags=dict(run.tags),
            )
        return SimpleNamespace(info=info, data=data)

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
    ) -> None:
        self.log_batch(run_id, metrics=[Metric(key, value, timestamp or _now_ms(), step or 0)])

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Any] = (),
        params: Iterable[Any] = (),
        tags: Iterable[Any] = (),
    ) -> None:
        """`metrics` as `Metric` (this module's or mlflow's); exact duplicates are dropped."""
        with self.server._lock:
            run = self.server.run(run_id)
            for item in metrics:
                point = Metric(item.key, float(item.value), int(item.timestamp), int(item.step))
                series = run.history.setdefault(point.key, [])
                if _identity(point) not in run.logged:
                    run.logged.add(_identity(point))
                    series.append(point)
            run.params.update((p.key, str(p.value)) for p in params)
            run.tags.update((t.key, str(t.value)) for t in tags)

    def log_param(self, run_id: str, key: str, value: Any) -> None:
        self.log_batch(run_id, params=[Param(key, str(value))])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.log_batch(run_id, tags=[RunTag(key, str(value))])

    def delete_tag(self, run_id: str, key: str) -> None:
        with self.server._lock:
            del self.server.run(run_id).tags[key]

    def set_terminated(
        self, run_id: str, status: str = "FINISHED", end_time: int | None = None
    ) -> None:
        self.update_run(run_id, status=status, end_time=end_time or _now_ms())

    def update_run(
        self,
        run_id: str,
        status: str | None = None,
        name: str | None = None,
        end_time: int | None = None,
    ) -> None:
        with self.server._lock:
            run = self.server.run(run_id)
            if status is not None:
                run.status = status
                run.end_time = end_time or (None if status == "RUNNING" else _now_ms())
            if name is not None:
                run.tags["mlflow.runName"] = name

    def delete_run(self, run_id: str) -> None:
        with self.server._lock:
            self.server.run(run_id).lifecycle_stage = "deleted"

    def restore_run(self, run_id: str) -> None:
        with self.server._lock:
            self.server.run(run_id).lifecycle_stage = "active"

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        name = Path(local_path).name
        self.put_artifact(run_id, posixpath.join(artifact_path or "", name), Path(local_path))

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                relative = path.relative_to(local_dir).as_posix()
                self.put_artifact(run_id, posixpath.join(artifact_path or "", relative), path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.put_artifact(run_id, artifact_file, text.encode())

    def put_artifact(self, run_id: str, path: str, data: bytes | Path) -> None:
        """Store (or replace) one artifact file (not MlflowClient's: a scripting shortcut)."""
        content = data.read_bytes() if isinstance(data, Path) else data
        with self.server._lock:
            self.server.run(run_id).artifacts[path] = content

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        with self.server._lock:
            return self.server._history(run_id, key)

    def search_runs(self, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
        with self.server._lock:
            found = self.server._search_runs({
                "experiment_ids": experiment_ids, "filter": filter_string,
                "max_results": 50_000, "order_by": ["attributes.start_time ASC"],
            })  # fmt: skip
        return [self.get_run(run["info"]["run_id"]) for run in found.get("runs", [])]


def _identity(point: Metric) -> tuple[str, int, int, str]:
    """What makes a point a duplicate for MLflow: same key, timestamp, step and value."""
    return point.key, point.timestamp, point.step, repr(point.value)
