"""What a command pays for before it does anything: `tbmirror --help` imports no engine and none
of the heavy libraries, tbmirror.app no engine until a source is built, building the engines
imports neither protobuf nor TensorBoard nor numpy nor PIL (only the passes that write or read
records do), and a client that talks only http:// builds no TLS context. Imports are read from
`sys.modules` in a fresh interpreter (those tests carry the e2e mark): a guard on correctness,
not a timing (benchmarks/start.py times the commands)."""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.in_process import engine_for
from helpers.scripted_mlflow import URL as SCRIPTED_URL
from helpers.scripted_mlflow import ScriptedMlflow
from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.base import PassReport
from tbmirror.errors import SourceError
from tbmirror.journal import Journal
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.sources.http import RestClient

HEAVY = ("numpy", "PIL", "tensorboard", "google.protobuf", "rich", "mlflow", "pydantic", "httpx")


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def heavy_among(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in heavy or name in heavy)


@pytest.mark.e2e
@pytest.mark.parametrize("argv", [["--help"], ["sync", "--help"], ["--version"]])
def test_help_imports_no_engine_and_no_heavy_library(argv: list[str]) -> None:
    code = (
        "from tbmirror.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as end:\n    assert end.code == 0, end"
    )
    modules = imported_by(code)
    assert "tbmirror.cli" in modules  # the command did run
    assert heavy_among(modules, HEAVY) == []
    assert sorted(m for m in modules if m.startswith("tbmirror.")) == [
        "tbmirror.cli",
        "tbmirror.errors",
    ]


@pytest.mark.e2e
def test_app_imports_no_engine_until_a_source_is_built() -> None:
    """`status` and `prune` use the kinds without building a source: no engine, no HTTP stack."""
    modules = imported_by("import tbmirror.app")
    assert sorted(m for m in modules if m.startswith("tbmirror.engine.")) == [
        "tbmirror.engine.base"
    ]
    assert heavy_among(modules, ("httpcore", "google.protobuf", "tensorboard", "numpy")) == []


@pytest.mark.e2e
def test_engines_are_built_without_protobuf_tensorboard_numpy_or_pil() -> None:
    modules = imported_by(
        "import tbmirror.app\n"
        "from tbmirror.kinds.mlflow.build import build_engine\n"
        "from tbmirror.engine.uploads import UploadEngine"
    )
    assert "tbmirror.engine.mlflow.engine" in modules  # the engines are there
    assert "tbmirror.engine.tailing" in modules
    heavy = ("numpy", "PIL", "absl", "tensorboard", "google.protobuf", "tbmirror.mirror.records")
    assert heavy_among(modules, heavy) == []


@pytest.fixture
def tls_contexts_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ssl.SSLContext]]:
    """Every TLS context sources/http.py builds (httpx's own, counted as it is built)."""
    built: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def counted() -> ssl.SSLContext:
        built.append(real())
        return built[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    yield built


def test_a_client_builds_its_tls_context_at_its_first_https_connection_only(
    tls_contexts_built: list[ssl.SSLContext],
) -> None:
    """Loading the CA bundle costs tens of ms: none for http://, one for all https:// requests
    of a client (each refused here: a bound port that does not listen)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = RestClient(f"http://127.0.0.1:{port}", timeout=5, max_retries=0)
        try:
            for scheme, contexts in (("http", 0), ("http", 0), ("https", 1), ("https", 1)):
                with pytest.raises(SourceError, match="cannot connect"):
                    client.get("/x", url=f"{scheme}://127.0.0.1:{port}/x")
                assert len(tls_contexts_built) == contexts, (scheme, tls_contexts_built)
        finally:
            client.close()
    assert tls_contexts_built[0].verify_mode == ssl.CERT_REQUIRED


def test_a_ca_bundle_that_cannot_be_loaded_is_one_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SSL_CERT_FILE naming a missing file fails each https request at once (not retried, not
    an unexpected error) with a message naming the variable; http:// requests are untouched."""
    missing = tmp_path / "no-such-bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = RestClient(f"http://127.0.0.1:{port}", timeout=5, max_retries=3)
        try:
            for _ in range(2):
                with pytest.raises(SourceError) as raised:
                    client.get("/x", url=f"https://127.0.0.1:{port}/x")
                assert type(raised.value) is SourceError, raised.value
                assert str(raised.value).startswith(
                    f"cannot load the CA certificates to verify https servers "
                    f"(SSL_CERT_FILE={missing}): "
                ), raised.value
            with pytest.raises(SourceError, match="cannot connect"):
                client.get("/x", url=f"http://127.0.0.1:{port}/x")
        finally:
            client.close()


@pytest.mark.e2e
def test_building_a_source_imports_httpcore_without_trio() -> None:
    """httpcore imports trio (for async code under trio, which tbmirror never runs) unless
    tbmirror.sources hides it for that one import; trio itself stays importable."""
    if importlib.util.find_spec("trio") is None:
        pytest.skip("trio is not installed: httpcore cannot import it")
    modules = imported_by("import tbmirror.sources.http")
    assert "httpcore" in modules
    assert heavy_among(modules, ("trio",)) == []
    assert "trio" in imported_by("import tbmirror.sources.http\nimport trio")


@pytest.mark.e2e
def test_a_valid_config_is_loaded_without_difflib() -> None:
    """difflib (did you mean ...?) is imported only to render an error."""
    code = (
        "from tbmirror.config import parse_settings\n"
        "parse_settings('mirror: {root: /tmp/r, state: /tmp/s.db}\\n"
        "sources: [{name: s, type: mlflow, tracking_uri: http://h, experiments: [e]}]')"
    )
    assert "difflib" not in imported_by(code)


@pytest.mark.e2e
def test_a_config_is_loaded_without_pydantic() -> None:
    """The settings are msgspec structs: loading a file builds no schema with pydantic, whose
    machinery alone was a quarter of every command's start (benchmarks/start.py)."""
    modules = imported_by(
        "from tbmirror.config import parse_settings\n"
        "parse_settings('mirror: {root: /tmp/r, state: /tmp/s.db}\\n"
        "sources: [{name: s, type: mlflow, tracking_uri: http://h, experiments: [e]}]')"
    )
    assert "tbmirror.config.schema" in modules  # the file was loaded
    assert heavy_among(modules, ("pydantic", "pydantic_core", "annotated_types")) == []


# --- the listing's requests made side by side (sources/mlflow/listing.py) --------------------

WAIT_SECONDS = 10  # how long a request waits for another to be in flight with it


class SideBySide(httpx.BaseTransport):
    """Sends each request through `inner`. A search (of experiments or runs) waits, at most
    WAIT_SECONDS, until another is in flight with it, until two have been; `most` is the most
    in flight at once, `searched` the experiment ids of each runs/search. A runs/search of
    experiment `failing` (if set) is answered HTTP 400."""

    def __init__(self, inner: httpx.BaseTransport, failing: str | None = None) -> None:
        self.inner, self.failing = inner, failing
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.together = threading.Event()
        self.searched: list[list[str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith(("/experiments/search", "/runs/search")):
            return self.inner.handle_request(request)
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.in_flight == 2:
                self.together.set()
        try:
            self.together.wait(WAIT_SECONDS)
            if request.url.path.endswith("/runs/search"):
                experiments = json.loads(request.content)["experiment_ids"]
                with self.lock:
                    self.searched.append(experiments)
                if experiments == [self.failing]:
                    error = {"error_code": "INVALID_PARAMETER_VALUE", "message": "refused"}
                    return httpx.Response(400, json=error)
            return self.inner.handle_request(request)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def parent_and_child(scripted: ScriptedMlflow) -> tuple[str, str]:
    """A run in experiment `e` and its child logged into Default (another experiment); the
    configured experiment's id."""
    client = scripted.client()
    experiment_id = client.create_experiment("e")
    parent = client.create_run(experiment_id, run_name="parent").info.run_id
    client.create_run("0", run_name="child", tags={"mlflow.parentRunId": parent})
    return experiment_id, parent


def sync_pass(tmp_path: Path, transport: httpx.BaseTransport) -> tuple[PassReport, Path]:
    """One full pass of source `s` (experiment `e`, no retries) through `transport`."""
    settings = MlflowSourceSettings(name="s", tracking_uri=SCRIPTED_URL,
                                    experiments=["e"], max_retries=0)  # fmt: skip
    root = tmp_path / "root"
    journal = Journal.open(MirrorLayout(root), tmp_path / "state.db")
    try:
        journal.own(settings.name)
        engine = engine_for(settings, journal, transport)
        try:
            return engine.run_pass(), root / "s" / "e"
        finally:
            engine.close()
    finally:
        journal.close()


def listing_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("experiments", "look-up"))]


def test_every_experiment_is_searched_beside_the_listing(
    tmp_path: Path, scripted: ScriptedMlflow, parent_and_child: tuple[str, str]
) -> None:
    """The search for every experiment (where child runs are looked for) is in flight with the
    listing's runs/search; the child runs' search follows the listing, as before."""
    experiment_id, _ = parent_and_child
    transport = SideBySide(scripted.transport)
    report, experiment_dir = sync_pass(tmp_path, transport)
    assert report.failure is None and report.runs_written == 2, report
    assert transport.most == 2, "experiments/search never in flight with the runs/search"
    assert transport.searched == [[experiment_id], ["0"]]
    assert (experiment_dir / "parent" / "child").is_dir()
    assert listing_threads() == []


def test_a_failed_search_beside_the_listing_ends_the_pass_with_its_one_error(
    tmp_path: Path, scripted: ScriptedMlflow, parent_and_child: tuple[str, str]
) -> None:
    """The child runs' search fails (experiments/search, then runs/search in Default): the
    pass fails with that one error once the configured experiment's runs are listed, as when
    the requests were made one after another."""
    scripted.set("status", path="experiments/search", times=1, code=503)
    report, _ = sync_pass(tmp_path, scripted.transport)
    assert str(report.failure) == "POST /api/2.0/mlflow/experiments/search: HTTP 503", report
    assert report.runs_listed == 1 and report.runs_written == 0, report

    transport = SideBySide(scripted.transport, failing="0")
    report, _ = sync_pass(tmp_path, transport)
    assert transport.most == 2, "experiments/search never in flight with the runs/search"
    assert str(report.failure) == (
        "POST /api/2.0/mlflow/runs/search: HTTP 400 INVALID_PARAMETER_VALUE: refused"
    ), report
    assert listing_threads() == []


def test_a_failed_listing_ends_the_pass_with_its_own_error_and_no_child_search(
    tmp_path: Path, scripted: ScriptedMlflow, parent_and_child: tuple[str, str]
) -> None:
    """The listing's runs/search fails: the search beside it has ended when the pass does, with
    the listing's error; the child runs are not searched, as when the requests were made one
    after another."""
    experiment_id, _ = parent_and_child
    transport = SideBySide(scripted.transport, failing=experiment_id)
    report, experiment_dir = sync_pass(tmp_path, transport)
    assert transport.most == 2, "experiments/search never in flight with the runs/search"
    assert str(report.failure) == (
        "POST /api/2.0/mlflow/runs/search: HTTP 400 INVALID_PARAMETER_VALUE: refused"
    ), report
    assert transport.searched == [[experiment_id]]
    assert report.runs_written == 0 and not experiment_dir.exists()
    assert listing_threads() == []


@pytest.mark.e2e
@pytest.mark.parametrize("argv", [None, ["sync"]])
def test_the_program_ends_a_sync_without_the_interpreters_teardown(
    tmp_path: Path, argv: list[str] | None
) -> None:
    """`tbmirror sync` (main() reading sys.argv) has closed all it opened when its passes end:
    the process exits at once, its summary flushed (an atexit hook never runs); main called
    with its arguments, as tests do, returns."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        source = {"name": "s", "type": "mlflow", "experiments": ["e"], "max_retries": 0,
                  "tracking_uri": f"http://127.0.0.1:{closed.getsockname()[1]}"}  # fmt: skip
        config = {"mirror": {"root": str(tmp_path / "r"), "state": str(tmp_path / "s.db")},
                  "sources": [source]}  # fmt: skip
        (tmp_path / "c.yaml").write_text(json.dumps(config))
        command = ["sync", "--config", str(tmp_path / "c.yaml")]
        code = (
            "import atexit, sys\n"
            "atexit.register(lambda: print('teardown', flush=True))\n"
            f"sys.argv = ['tbmirror', *{command!r}]\n"
            "from tbmirror.cli import main\n"
            f"raise SystemExit(main({command if argv else None!r}))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL  s: GET /api/2.0/mlflow/experiments/get-by-name: "), lines
    assert lines[1:] == ([] if argv is None else ["teardown"])
