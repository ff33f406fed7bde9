"""The `auth` sections of an MLflow source."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from tbmirror.config.base import SecretSource
from tbmirror.config.values import AbsolutePath, HttpUrl, Secret


class BasicAuth(SecretSource, tag="basic", frozen=True):
    """MLflow's own basic authentication (`mlflow server --app-name basic-auth`)."""

    username: Annotated[str, Meta(description="The MLflow user name.")]
    password: Annotated[
        Secret | None,
        Meta(description="The password (write `${ENV_VAR}`, not the secret itself)."),
    ] = None
    password_file: Annotated[
        AbsolutePath | None,
        Meta(
            description="A file holding the password, e.g. a systemd credential "
            "(`${CREDENTIALS_DIRECTORY}/mlflow-password`). Give `password` or this."
        ),
    ] = None

    def __post_init__(self) -> None:
        self._one_of("password")


class BearerAuth(SecretSource, tag="bearer", frozen=True):
    """A static bearer token."""

    token: Annotated[
        Secret | None, Meta(description="The token, sent as `Authorization: Bearer <token>`.")
    ] = None
    token_file: Annotated[
        AbsolutePath | None, Meta(description="A file holding the token. Give `token` or this.")
    ] = None

    def __post_init__(self) -> None:
        self._one_of("token")


class DatabricksAuth(SecretSource, tag="databricks", frozen=True):
    """A Databricks workspace: a personal access token, or OAuth machine-to-machine."""

    host: Annotated[
        HttpUrl | None, Meta(description="The workspace URL. Unset: the source's `tracking_uri`.")
    ] = None
    token: Annotated[Secret | None, Meta(description="A personal access token.")] = None
    token_file: Annotated[
        AbsolutePath | None, Meta(description="A file holding a personal access token.")
    ] = None
    client_id: Annotated[
        str | None,
        Meta(
            description="A service principal's client id, for OAuth machine-to-machine (the "
            "secret is exchanged at `<host>/oidc/v1/token`, the token refreshed before it "
            "expires)."
        ),
    ] = None
    client_secret: Annotated[
        Secret | None,
        Meta(description="The service principal's OAuth secret (with `client_id`)."),
    ] = None
    client_secret_file: Annotated[
        AbsolutePath | None, Meta(description="A file holding the OAuth secret.")
    ] = None

    def __post_init__(self) -> None:
        if self.client_id is None:
            self._one_of("token")
            self._one_of("client_secret", required=False)
            if self.client_secret or self.client_secret_file:
                raise ValueError("client_secret needs client_id")
        else:
            self._one_of("client_secret")
            if self.token or self.token_file:
                raise ValueError("give either token or client_id/client_secret, not both")


class AzureAuth(SecretSource, tag="azure", frozen=True):
    """An Azure ML workspace, with a token from azure-identity (the `azure` extra)."""

    credential: Annotated[
        Literal["default", "managed_identity", "environment", "cli"],
        Meta(
            description="Which azure-identity credential: `default` (DefaultAzureCredential), "
            "`managed_identity`, `environment` (a service principal from `AZURE_CLIENT_ID`, "
            "`AZURE_TENANT_ID`, `AZURE_CLIENT_SECRET`) or `cli` (`az login`)."
        ),
    ] = "default"
    client_id: Annotated[
        str | None, Meta(description="The client id of a user-assigned managed identity.")
    ] = None
    scope: Annotated[str, Meta(description="The scope tokens are requested for.")] = (
        "https://management.azure.com/.default"
    )


Auth = BasicAuth | BearerAuth | DatabricksAuth | AzureAuth
