"""A real Azure Blob Storage emulator (Azurite) for tests, prepared before they run.

`Azurite(location)` starts the `azurite-blob` that `tests/prepare.py` installed
(helpers/prepared.py; the test fails, naming that command, if it is missing) on a free port of
127.0.0.1 with its data under `location`, and waits until it answers. `close()` (or leaving the
`with` block) kills its process group. It serves the well-known development account
`devstoreaccount1` at `blob_endpoint` (path-style URLs), and only that one (`AZURITE_ACCOUNTS` is
not passed on). Flags (all in 3.35.0's `azurite-blob --help`): `--skipApiVersionCheck`
(azure-storage-blob may send a newer x-ms-version than Azurite knows), `--loose` (unsupported
headers ignored), `--silent` (no access log), `--disableTelemetry` (no attempt to reach the
internet).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import httpx
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from helpers.prepared import azurite_executable
from tbmirror.processes import free_port, stop_process_group

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite): not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
WRONG_KEY = base64.b64encode(b"not the account key".ljust(64, b"!")).decode()


class Azurite:
    """A running `azurite-blob` (see the module docstring) and a client of its account."""

    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY

    def __init__(self, location: Path, log_path: Path | None = None) -> None:
        executable = azurite_executable()
        port = free_port()
        self.origin = f"http://127.0.0.1:{port}"
        self.blob_endpoint = f"{self.origin}/{ACCOUNT_NAME}"
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};"
        )
        log = (log_path or location / "azurite.log").open("ab")
        self.process = subprocess.Popen(
            [str(executable), "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--location", str(location), "--skipApiVersionCheck", "--loose", "--silent",
             "--disableTelemetry"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
        )  # fmt: skip
        log.close()
        try:
            self._wait_ready(60)
        except BaseException:
            self.close()
            raise
        self.service = BlobServiceClient.from_connection_string(self.connection_string)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"azurite-blob exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    http.get(f"{self.blob_endpoint}?comp=list")  # any answer: it listens
                    return
                time.sleep(0.1)
        raise RuntimeError(f"azurite-blob did not answer within {timeout} s")

    def put(self, container: str, name: str, data: bytes) -> None:
        """Upload `data` as the whole block blob `name` (overwritten; container created)."""
        with contextlib.suppress(ResourceExistsError):
            self.service.create_container(container)
        self.service.get_blob_client(container, name).upload_blob(data, overwrite=True)

    def sas_url(
        self, container: str, name: str, ttl_seconds: float, *, bad_signature: bool = False
    ) -> str:
        """A read-only SAS URL of the blob, valid for `ttl_seconds` (expiry has 1 s resolution);
        with `bad_signature` it is signed with a wrong key (Azurite: 403 AuthenticationFailed)."""
        token = generate_blob_sas(
            ACCOUNT_NAME,
            container,
            name,
            account_key=WRONG_KEY if bad_signature else ACCOUNT_KEY,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        )
        return f"{self.service.get_blob_client(container, name).url}?{token}"

    def list(self, container: str, prefix: str = "") -> list[tuple[str, int]]:
        """(name, size) of the blobs whose name starts with `prefix`, by name; [] if no
        such container."""
        blobs = self.service.get_container_client(container).list_blobs(name_starts_with=prefix)
        try:
            return sorted((blob.name, int(blob.size)) for blob in blobs)
        except ResourceNotFoundError:
            return []

    def close(self) -> None:
        """Stop azurite-blob (its whole process group)."""
        if hasattr(self, "service"):
            self.service.close()
        stop_process_group(self.process, grace=5)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
