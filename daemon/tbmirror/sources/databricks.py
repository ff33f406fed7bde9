"""Databricks' artifact store: listed with MLflow's `artifacts/list` (Databricks serves it, with
sizes), read through the signed URLs of `POST /api/2.0/mlflow/artifacts/credentials-for-read`.

Databricks does not serve `/get-artifact`: run artifacts live in the workspace's cloud storage
(`dbfs:/databricks/mlflow-tracking/<experiment>/<run>/artifacts`), and the only way to their bytes
is the one mlflow's own `DatabricksArtifactRepository` (mlflow 3.17) takes: ask the credential
service for a signed URL per file (an Azure SAS, a presigned S3 or GCS URL) with the headers to
send along, then GET it, here with Range headers. The credential endpoint is not in Databricks'
public REST reference; its request and answer are those of mlflow's `databricks_artifacts.proto`.
"""

from __future__ import annotations

from tbmirror.sources.http import BadAnswerError, RestClient
from tbmirror.sources.responses import CredentialsPage, parse
from tbmirror.sources.stores import (
    Artifact,
    ArtifactStore,
    FileReader,
    RunRef,
    SignedUrl,
    SignedUrls,
)

CREDENTIALS_FOR_READ = "/api/2.0/mlflow/artifacts/credentials-for-read"


class DatabricksArtifacts:
    """A Databricks workspace's artifact store (see the module docstring). Thread-safe."""

    sizes_listed = True

    def __init__(self, listing: ArtifactStore, api: RestClient, storage: RestClient) -> None:
        """`listing`: MLflow's `artifacts/list` walk; `api`: the workspace's REST client (for
        signed URLs); `storage`: for the signed URLs themselves."""
        self._listing, self._api, self._storage = listing, api, storage
        self._signed = SignedUrls(storage, self._signed_url)

    @property
    def requests_made(self) -> int:
        return self._storage.requests_made  # (the listing and the API share the source's client)

    def files(self, run: RunRef, images_folder: bool) -> list[Artifact]:
        return self._listing.files(run, images_folder)

    def reader(self, run: RunRef, artifact: Artifact) -> FileReader:
        return self._signed.reader(run, artifact)

    def _signed_url(self, run: RunRef, path: str) -> SignedUrl:
        body = self._api.post(CREDENTIALS_FOR_READ, {"run_id": run.run_id, "path": [path]})
        answer = parse(CredentialsPage, body, CREDENTIALS_FOR_READ)
        for credential in answer.credential_infos:
            if credential.path in (None, path):
                headers = {header.name: header.value for header in credential.headers}
                return SignedUrl(credential.signed_uri, headers)
        raise BadAnswerError(f"{CREDENTIALS_FOR_READ}: no signed URL for {path}")

    def close(self) -> None:
        self._storage.close()  # (the API client is the source's)
