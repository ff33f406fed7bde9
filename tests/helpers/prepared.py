"""What the tests need from the network, fetched once before they run, never by a test.

`python tests/prepare.py` (run by `.ci/run` before the test command) installs into CACHE
(`~/.cache/tbmirror-tests`, or $TBMIRROR_TEST_CACHE):
- Azurite, the real Azure Storage emulator: `npm install azurite@AZURITE_VERSION` (the last
  release that runs on Node 20);
- the wire models of `azureml-mlflow==AZUREML_MLFLOW`: its wheel by `pip download --no-deps`, and
  the two model files taken out of it (installing the package would pull azureml-core and an
  older mlflow).
A test that needs one of them and finds it missing fails saying so (`azurite_executable`,
`azureml_models`); it does not download it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("TBMIRROR_TEST_CACHE", Path.home() / ".cache" / "tbmirror-tests"))
AZURITE_VERSION = "3.35.0"
AZUREML_MLFLOW = "1.62.0.post6"
MODELS_IN_WHEEL = "azureml/mlflow/_restclient/run_artifact/models/"
MODEL_FILES = ("_azure_machine_learning_workspaces_enums.py", "_models_py3.py")  # in import order
PREPARE = ".venv/bin/python tests/prepare.py"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if missing) for the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _azurite_dir(cache: Path) -> Path:
    return cache / f"azurite-{AZURITE_VERSION}"


def _models_dir(cache: Path) -> Path:
    return cache / f"azureml-mlflow-{AZUREML_MLFLOW}" / "models"


def azurite_executable(cache: Path = CACHE) -> Path:
    """The prepared `azurite-blob`; the test fails, naming the command to run, if it is not."""
    executable = _azurite_dir(cache) / "node_modules" / ".bin" / "azurite-blob"
    if not (_azurite_dir(cache) / ".installed").exists() or not executable.exists():
        pytest.fail(f"azurite@{AZURITE_VERSION} is not prepared in {cache}: run {PREPARE}")
    return executable


def azureml_models(cache: Path = CACHE) -> Path:
    """The directory of the prepared azureml-mlflow model files; the test fails if missing."""
    directory = _models_dir(cache)
    if not all((directory / name).exists() for name in MODEL_FILES):
        pytest.fail(
            f"azureml-mlflow=={AZUREML_MLFLOW} models not prepared in {cache}: run {PREPARE}"
        )
    return directory


def npm_install(
    directory: Path, package: str, lock: Path, extra: dict[str, str] | None = None
) -> None:
    """npm-install `package` ("name@version") into `directory` with the `extra` files beside it,
    once: under the file lock `lock`, marked done by `.installed` when everything is there."""
    with file_lock(lock):
        if (directory / ".installed").exists():
            return
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(directory), "--no-audit", "--no-fund", package],
            check=True, timeout=900,
        )  # fmt: skip
        for name, text in (extra or {}).items():
            (directory / name).write_text(text)
        (directory / ".installed").touch()


def install_azurite(cache: Path = CACHE) -> None:
    """npm-install azurite@AZURITE_VERSION into the cache (once)."""
    npm_install(
        _azurite_dir(cache), f"azurite@{AZURITE_VERSION}", cache / f"azurite-{AZURITE_VERSION}.lock"
    )


def download_azureml_models(cache: Path = CACHE) -> None:
    """pip-download the azureml-mlflow wheel (no dependencies) and take its model files out."""
    directory = _models_dir(cache)
    with file_lock(cache / f"azureml-mlflow-{AZUREML_MLFLOW}.lock"):
        if all((directory / name).exists() for name in MODEL_FILES):
            return
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
             str(directory.parent), f"azureml-mlflow=={AZUREML_MLFLOW}"],
            check=True, timeout=600,
        )  # fmt: skip
        (wheel,) = directory.parent.glob("azureml_mlflow-*.whl")
        directory.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in MODEL_FILES:
                (directory / name).write_bytes(archive.read(MODELS_IN_WHEEL + name))
