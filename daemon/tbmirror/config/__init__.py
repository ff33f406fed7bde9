"""The configuration file: YAML -> validated `Settings`.

The shape of the file lives in this package and only here: schema.py (the top level and its
sections) with one module per source kind's settings (mlflow.py, uploads.py, auth.py), base.py
(what every section is), values.py (durations, sizes, URLs, hosts, secrets, paths), loading.py
(YAML, `${ENV_VAR}`, conversion) and rendering.py (errors as the operator reads them). The
sections are msgspec structs: building them imports no schema machinery, which keeps every
command's start short (`benchmarks/start.py`).
`load_settings` either returns settings that the rest of tbmirror can trust or raises
`ConfigError` whose message names the file, the key path (`sources[0].poll_interval`) and what
was expected.

Settings that validate also build: every value is checked here (URLs parsed down to the host and
port, ports, durations, sizes and counts in range, no NUL anywhere, secrets on one line), so a
source's engine, the scheduler, TensorBoard and the health endpoint never meet a value they
cannot use. No error message shows a secret, a line of the file or a URL's user:password@.
"""

from tbmirror.config.auth import Auth, AzureAuth, BasicAuth, BearerAuth, DatabricksAuth
from tbmirror.config.loading import load_settings, parse_settings, settings_from
from tbmirror.config.mlflow import ArtifactSettings, MlflowSourceSettings
from tbmirror.config.schema import (
    HealthSettings,
    LoggingSettings,
    MirrorSettings,
    Settings,
    SourceSettings,
    TensorBoardSettings,
)
from tbmirror.config.uploads import UploadsSourceSettings
from tbmirror.config.values import (
    azureml_workspace,
    http_url,
    listen_host,
    parse_duration,
    without_userinfo,
)

__all__ = [
    "ArtifactSettings",
    "Auth",
    "AzureAuth",
    "BasicAuth",
    "BearerAuth",
    "DatabricksAuth",
    "HealthSettings",
    "LoggingSettings",
    "MirrorSettings",
    "MlflowSourceSettings",
    "Settings",
    "SourceSettings",
    "TensorBoardSettings",
    "UploadsSourceSettings",
    "azureml_workspace",
    "http_url",
    "listen_host",
    "load_settings",
    "parse_duration",
    "parse_settings",
    "settings_from",
    "without_userinfo",
]
