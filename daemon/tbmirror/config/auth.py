"""The `auth` sections of an MLflow source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from tbmirror.config.base import SecretSource
from tbmirror.config.values import http_url


class BasicAuth(SecretSource):
    """MLflow's own basic authentication (`mlflow server --app-name basic-auth`)."""

    type: Literal["basic"] = Field(description="`basic`.")
    username: str = Field(description="The MLflow user name.")
    password: SecretStr | None = Field(
        default=None, description="The password (write `${ENV_VAR}`, not the secret itself)."
    )
    password_file: Path | None = Field(
        default=None,
        description="A file holding the password, e.g. a systemd credential "
        "(`${CREDENTIALS_DIRECTORY}/mlflow-password`). Give `password` or this.",
    )

    @model_validator(mode="after")
    def _password(self) -> BasicAuth:
        self._one_of(self, "password")
        return self


class BearerAuth(SecretSource):
    """A static bearer token."""

    type: Literal["bearer"] = Field(description="`bearer`.")
    token: SecretStr | None = Field(
        default=None, description="The token, sent as `Authorization: Bearer <token>`."
    )
    token_file: Path | None = Field(
        default=None, description="A file holding the token. Give `token` or this."
    )

    @model_validator(mode="after")
    def _token(self) -> BearerAuth:
        self._one_of(self, "token")
        return self


class DatabricksAuth(SecretSource):
    """A Databricks workspace: a personal access token, or OAuth machine-to-machine."""

    type: Literal["databricks"] = Field(description="`databricks`.")
    host: str | None = Field(
        default=None, description="The workspace URL. Unset: the source's `tracking_uri`."
    )
    token: SecretStr | None = Field(default=None, description="A personal access token.")
    token_file: Path | None = Field(
        default=None, description="A file holding a personal access token."
    )
    client_id: str | None = Field(
        default=None,
        description="A service principal's client id, for OAuth machine-to-machine (the "
        "secret is exchanged at `<host>/oidc/v1/token`, the token refreshed before it expires).",
    )
    client_secret: SecretStr | None = Field(
        default=None, description="The service principal's OAuth secret (with `client_id`)."
    )
    client_secret_file: Path | None = Field(
        default=None, description="A file holding the OAuth secret."
    )

    @field_validator("host")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _credentials(self) -> DatabricksAuth:
        if self.client_id is None:
            self._one_of(self, "token")
            self._one_of(self, "client_secret", required=False)
            if self.client_secret or self.client_secret_file:
                raise ValueError("client_secret needs client_id")
        else:
            self._one_of(self, "client_secret")
            if self.token or self.token_file:
                raise ValueError("give either token or client_id/client_secret, not both")
        return self


class AzureAuth(SecretSource):
    """An Azure ML workspace, with a token from azure-identity (the `azure` extra)."""

    type: Literal["azure"] = Field(description="`azure`.")
    credential: Literal["default", "managed_identity", "environment", "cli"] = Field(
        default="default",
        description="Which azure-identity credential: `default` (DefaultAzureCredential), "
        "`managed_identity`, `environment` (a service principal from `AZURE_CLIENT_ID`, "
        "`AZURE_TENANT_ID`, `AZURE_CLIENT_SECRET`) or `cli` (`az login`).",
    )
    client_id: str | None = Field(
        default=None, description="The client id of a user-assigned managed identity."
    )
    scope: str = Field(
        default="https://management.azure.com/.default",
        description="The scope tokens are requested for.",
    )


Auth = Annotated[BasicAuth | BearerAuth | DatabricksAuth | AzureAuth, Field(discriminator="type")]
