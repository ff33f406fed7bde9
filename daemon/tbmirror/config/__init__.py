"""The configuration file: YAML -> validated `Settings`.

The shape of the file lives in this package and only here: schema.py (the top level and its
sections) with one module per source kind's settings (mlflow.py, uploads.py, auth.py), base.py
(what every section checks), values.py (durations, URLs, hosts, paths), loading.py (YAML,
`${ENV_VAR}`, validation) and rendering.py (errors as the operator reads them).
`load_settings` either returns settings that the rest of tbmirror can trust or raises
`ConfigError` whose message names the file, the key path (`sources[0].poll_interval`) and what
was expected.

Settings that validate also build: every value is checked here (URLs parsed down to the host and
port, ports, durations, sizes and counts in range, no NUL anywhere, secrets on one line), so a
source's engine, the scheduler, TensorBoard and the health endpoint never meet a value they
cannot use. No error message shows a secret, a line of the file or a URL's user:password@.
"""

import os

# pydantic reads every installed distribution's entry points for plugins when the first model
# class is built: ~40 million instructions in a large environment, at every command's start.
# tbmirror's settings use no plugin; an operator who wants one sets the variable to "".
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from tbmirror.config.auth import Auth, AzureAuth, BasicAuth, BearerAuth, DatabricksAuth
from tbmirror.config.loading import load_settings, parse_settings
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
    "without_userinfo",
]
