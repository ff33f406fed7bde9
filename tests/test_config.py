"""Config validation: a good file loads; every mistake names the file, the key path and what was
expected, and the CLI exits with 78."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, tbmirror
from tbmirror.config import load_settings, parse_settings
from tbmirror.errors import ConfigError

GOOD = """
mirror:
  root: /tmp/x/logs
  state: /tmp/x/state.db
sources:
  - name: team
    type: mlflow
    tracking_uri: http://127.0.0.1:5000/
    experiments: ["a", "b"]
    poll_interval: 10s
"""


def test_the_example_config_is_valid() -> None:
    settings = load_settings(REPO / "config" / "tbmirror.example.yaml")
    assert settings.sources[0].name


def test_a_good_config_loads_with_defaults() -> None:
    settings = parse_settings(GOOD)
    source = settings.sources[0]
    assert source.tracking_uri == "http://127.0.0.1:5000"
    assert source.poll_interval == 10.0 and source.on_delete == "remove"
    assert source.experiments == ["a", "b"] and not source.all_experiments


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("poll_interval: 10s", "poll_interval: soon"),
            "sources[0].poll_interval: expected a duration",
        ),
        (
            ("poll_interval: 10s", "poll_interval: 0"),
            "sources[0].poll_interval: expected a duration greater than 0",
        ),
        (
            ("type: mlflow", "type: wandb"),
            "sources[0].type: expected one of 'mlflow', 'uploads' (got 'wandb')",
        ),
        (
            ("    tracking_uri: http://127.0.0.1:5000/\n", ""),
            "sources[0].tracking_uri: required key is missing",
        ),
        (
            ("tracking_uri: http://", "tracking_uri: ftp://"),
            "sources[0].tracking_uri: expected an http:// or https:// (or azureml://) URL",
        ),
        (("name: team", "name: ../team"), "sources[0].name: String should match pattern"),
        (
            ("  state: /tmp/x/state.db", "  state: /tmp/x/state.db\n  colour: red"),
            "mirror.colour: unknown key",
        ),
        (
            ('experiments: ["a", "b"]', "experiments: []"),
            "sources[0].experiments: List should have at least 1 item",
        ),
    ],
)
def test_errors_name_the_key_path(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value)


def test_duplicate_source_names_are_refused() -> None:
    text = GOOD + GOOD.split("sources:\n")[1]
    with pytest.raises(ConfigError, match="the name 'team' is used twice"):
        parse_settings(text)


def test_environment_variables_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKING_HOST", "mlflow.internal:5000")
    settings = parse_settings(GOOD.replace("127.0.0.1:5000/", "${TRACKING_HOST}"))
    assert settings.sources[0].tracking_uri == "http://mlflow.internal:5000"
    escaped = parse_settings(GOOD.replace('["a", "b"]', '["a$$b"]'))
    assert escaped.sources[0].experiments == ["a$b"]


def test_a_missing_environment_variable_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"sources\[0\]\.tracking_uri: environment variable NO_SUCH_VARIABLE is not set",
    ):
        parse_settings(GOOD.replace("127.0.0.1:5000/", "${NO_SUCH_VARIABLE}"))


def test_cli_exits_78_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("10s", "often"))
    result = tbmirror("sync", "--config", str(path))
    assert result.returncode == 78
    assert f"{path}: sources[0].poll_interval: expected a duration" in result.stderr
    missing = tbmirror("check", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 78 and "cannot read the config file" in missing.stderr


UPLOADS = """
mirror: {root: /srv/tbmirror/logs, state: /srv/tbmirror/state.db}
sources:
  - {name: jobs, type: uploads, path: /mnt/uploads}
"""


def test_an_uploads_source_loads_with_defaults() -> None:
    source = parse_settings(UPLOADS).sources[0]
    assert source.type == "uploads" and source.observer == "native"
    assert source.rescan_interval == 60.0 and source.poll_interval == 60.0
    assert source.max_file_size == 2 * 1024**3
    sized = parse_settings(UPLOADS.replace("/mnt/uploads", "/mnt/uploads, max_file_size: 512MiB"))
    assert sized.sources[0].max_file_size == 512 * 1024**2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("path: /mnt/uploads", "path: uploads"), "sources[0].path: expected an absolute path"),
        (
            ("path: /mnt/uploads", "path: /mnt/uploads, observer: fanotify"),
            "sources[0].observer: Input should be 'native' or 'polling'",
        ),
        (
            ("path: /mnt/uploads", "path: /srv/tbmirror"),
            "sources[0].path: /srv/tbmirror and mirror.root /srv/tbmirror/logs must not contain",
        ),
        (
            ("path: /mnt/uploads", "path: /mnt/uploads, rescan_interval: 0"),
            "sources[0].rescan_interval: expected a duration greater than 0",
        ),
        (
            ("path: /mnt/uploads", "path: /mnt/uploads, max_file_size: lots"),
            "sources[0].max_file_size: could not parse value and unit from byte string",
        ),
    ],
)
def test_uploads_errors_name_the_key_path(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(UPLOADS.replace(*change), origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value)


def test_an_upload_directory_linked_to_the_mirror_is_refused(tmp_path: Path) -> None:
    (tmp_path / "srv" / "logs").mkdir(parents=True)
    (tmp_path / "uploads").symlink_to(tmp_path / "srv", target_is_directory=True)
    text = UPLOADS.replace("/srv/tbmirror", str(tmp_path / "srv")).replace(
        "/mnt/uploads", str(tmp_path / "uploads")
    )
    with pytest.raises(ConfigError, match=r"sources\[0\]\.path: .* must not contain each other"):
        parse_settings(text)
