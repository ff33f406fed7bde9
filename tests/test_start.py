"""What a command pays for before it does anything: `tbmirror --help` imports no engine and none
of the heavy libraries, tbmirror.app no engine until a source is built, building the engines
imports neither protobuf nor TensorBoard nor numpy nor PIL (only the passes that write or read
records do), and a client that talks only http:// builds no TLS context. Imports are read from
`sys.modules` in a fresh interpreter (those tests carry the e2e mark): a guard on correctness,
not a timing (benchmarks/start.py times the commands)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tbmirror.errors import SourceError
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
