"""Config validation: a good file loads; every mistake names the file, the key path and what was
expected, and the CLI exits with 78."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, tbmirror
from tbmirror.app import KINDS, build_engine
from tbmirror.config import load_settings, parse_settings
from tbmirror.errors import ConfigError
from tbmirror.journal import Journal
from tbmirror.kinds.mlflow import with_cloud_defaults
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.processes import free_port

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
        (
            ("name: team", "name: ../team"),
            "sources[0].name: expected a string matching `^[A-Za-z0-9]",
        ),
        (
            ("  state: /tmp/x/state.db", "  state: /tmp/x/state.db\n  colour: red"),
            "mirror.colour: unknown key",
        ),
        (
            ('experiments: ["a", "b"]', "experiments: []"),
            "sources[0].experiments: expected at least 1 item",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    artifacts: {max_images: -1}'),
            "sources[0].artifacts.max_images: expected an integer at least 0 (got -1)",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    artifacts: {table_rows: 0}'),
            "sources[0].artifacts.table_rows: expected an integer at least 1 (got 0)",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    artifacts: {images: maybe}'),
            "sources[0].artifacts.images: expected true or false, not a string (got 'maybe')",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    run_statuses: [DONE]'),
            "sources[0].run_statuses[0]: expected one of 'RUNNING', 'SCHEDULED', 'FINISHED'",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    max_runs: 0'),
            "sources[0].max_runs: expected an integer at least 1 (got 0)",
        ),
        (
            ('experiments: ["a", "b"]', 'experiments: ["a"]\n    max_age: soon'),
            "sources[0].max_age: expected a duration",
        ),
        (
            ("  state: /tmp/x/state.db", "  state: /tmp/x/state.db\n  archive: /tmp/x/logs/old"),
            "mirror.archive: /tmp/x/logs/old and mirror.root /tmp/x/logs must not contain each "
            "other",
        ),
        (
            ("  state: /tmp/x/state.db", "  state: /tmp/x/state.db\n  archive: /dev/shm/archive"),
            "mirror.archive: /dev/shm/archive must be on the file system of mirror.root "
            "/tmp/x/logs",
        ),
    ],
)
def test_errors_name_the_key_path(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("poll_interval:", "pol_interval:"), "sources[0].pol_interval: unknown key (did you "
         "mean 'poll_interval'?)"),
        (("  root:", "  roots:"), "mirror.roots: unknown key (did you mean 'root'?)"),
        (("sources:", "tensorbaord: {port: 1}\nsources:"), "tensorbaord: unknown key (did you "
         "mean 'tensorboard'?)"),
        (("poll_interval: 10s", "auth: {type: bearer, tokn: x}"), "sources[0].auth.tokn: "
         "unknown key (did you mean 'token'?)"),
        (("poll_interval: 10s", "artifacts: {max_image: 3}"), "sources[0].artifacts.max_image: "
         "unknown key (did you mean 'max_images'?)"),
        (("  state: /tmp/x/state.db", "  state: /tmp/x/state.db\n  colour: red"),
         "mirror.colour: unknown key\n"),
    ],
)  # fmt: skip
def test_an_unknown_key_names_the_known_key_most_like_it(
    change: tuple[str, str], message: str
) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value) + "\n"


def test_offline_compares_paths_as_written(tmp_path: Path) -> None:
    """A symbolic link on this machine does not decide for a file made for another one."""
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    text = f"""
mirror: {{root: {tmp_path}/link/logs, state: /tmp/x/s.db, archive: {tmp_path}/elsewhere/logs/a}}
sources:
  - {{name: team, type: mlflow, tracking_uri: "http://127.0.0.1:5000", experiments: [a]}}
"""
    assert parse_settings(text, offline=True).mirror.archive == tmp_path / "elsewhere/logs/a"
    with pytest.raises(ConfigError, match="must not contain each other"):
        parse_settings(text)  # here the link is followed: the archive is inside the root


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


def test_numbers_and_booleans_given_as_strings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` always gives a string: `port: ${PORT}` must still be a port."""
    monkeypatch.setenv("PORT", "6008")
    text = GOOD + "tensorboard: {port: '${PORT}', enabled: 'false', memory_budget: 1.5GiB}\n"
    tensorboard = parse_settings(text).tensorboard
    assert (tensorboard.port, tensorboard.enabled) == (6008, False)
    assert tensorboard.memory_budget == 1024**3 * 3 // 2


@pytest.mark.parametrize(
    ("size", "expected"),
    [("512MiB", 512 * 1024**2), ("10GB", 10 * 10**9), ("1.5 KiB", 1536), (4096, 4096),
     ("8kb", 8000), ("100", 100), ("512M", 512 * 10**6), (".5GB", 5 * 10**8),
     ("9007199254740993", 2**53 + 1), ("1EiB", 2**60)],
)  # fmt: skip
def test_sizes_are_read_in_their_units(size: str | int, expected: int) -> None:
    text = GOOD + f"    max_response_bytes: {size}\n"
    assert parse_settings(text).sources[0].max_response_bytes == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("max_response_bytes: '" + "9" * 400 + "KiB'", "max_response_bytes: expected a size"),
        ("max_response_bytes: '0.1'", "max_response_bytes: expected a size greater than 0"),
        ("max_requests_per_second: '1e400'", "max_requests_per_second: expected a number within"),
        ("artifacts: {1: x}", "artifacts: expected every key to be a string"),
        ("auth: {type: null}", "auth.type: expected one of 'basic', 'bearer', 'databricks'"),
        ("experiments: [2020-01-01]", "experiments[0]: expected a string, not a date"),
        ("auth: {type: basic, username: u, password: 1234}", "auth.password: expected a string"),
    ],
)  # fmt: skip
def test_unusual_values_get_an_error_naming_the_key(change: str, message: str) -> None:
    text = GOOD + f"    {change}\n"
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: sources[0].{message}" in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value) and "1234" not in str(raised.value)


def test_each_section_and_source_names_its_own_problem() -> None:
    text = (
        GOOD.replace("poll_interval: 10s", "poll_interval: 0")
        + "  - {name: jobs, type: uploads, path: relative}\n"
        + "  - {name: other, type: s3}\n"
        + "tensorboard: {port: 0}\nhealth: {colour: red}\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert str(raised.value).splitlines() == [
        "my.yaml: sources[0].poll_interval: expected a duration greater than 0 (got 0)",
        "my.yaml: sources[1].path: expected an absolute path (got 'relative')",
        "my.yaml: sources[2].type: expected one of 'mlflow', 'uploads' (got 's3')",
        "my.yaml: tensorboard.port: expected an integer at least 1 (got 0)",
        "my.yaml: health.colour: unknown key",
    ]


def test_a_secret_is_never_shown_by_the_settings() -> None:
    text = GOOD + "    auth: {type: bearer, token: hunter2-token}\n"
    settings = parse_settings(text)
    auth = settings.sources[0].auth
    assert "hunter2" not in repr(settings) and "hunter2" not in str(auth)
    assert auth is not None and auth.secret("token") == "hunter2-token"
    assert parse_settings(text) == settings  # a reload of the same file changes nothing
    assert parse_settings(text.replace("hunter2", "hunter3")) != settings


@pytest.mark.e2e  # starts `tbmirror` (or another process)
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
    assert source.rescan_interval == 60.0 and KINDS.schedule(source).poll_interval == 60.0
    assert source.max_file_size == 2 * 1024**3
    sized = parse_settings(UPLOADS.replace("/mnt/uploads", "/mnt/uploads, max_file_size: 512MiB"))
    assert sized.sources[0].max_file_size == 512 * 1024**2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("path: /mnt/uploads", "path: uploads"), "sources[0].path: expected an absolute path"),
        (
            ("path: /mnt/uploads", "path: /mnt/uploads, observer: fanotify"),
            "sources[0].observer: expected one of 'native', 'polling' (got 'fanotify')",
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
            "sources[0].max_file_size: expected a size like '512MiB'",
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


# -- a config that validates also builds ----------------------------------------------------------

CLOSED_PORT = free_port()  # nothing listens there: a pass fails at once with "connection refused"


BUILDS = [  # accepted: the engine builds, and a pass fails only as a source error
    f"http://127.0.0.1:{CLOSED_PORT}",
    f"https://127.0.0.1:{CLOSED_PORT}/mlflow/",
    f"http://user:pw@127.0.0.1:{CLOSED_PORT}",
    f"http://[::1]:{CLOSED_PORT}",
    f"HTTP://127.0.0.1:{CLOSED_PORT}",
    f"azureml://127.0.0.1:{CLOSED_PORT}/mlflow/v1.0/subscriptions/s",
]
REFUSED = [  # refused at load, naming the key
    "http://mlflow:50o0",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:0",
    "http://127.0.0.1:-1",
    "http://127.0.0.1:+80",
    "http://:80",
    "http:///api",
    "http://[::1",
    "http://[zz]:5000",
    "http://999.1.1.1:5000",
    "http://xn--zz:5000",
    "http://bad_host!:5000",
    "http://a..b:5000",
    "http://ml flow:5000",
    "http://mlflow:5000\n",
    f"http://127.0.0.1:{CLOSED_PORT}/?token=x",
    f"http://127.0.0.1:{CLOSED_PORT}/#/experiments",
    "ftp://mlflow:21",
    "mlflow:5000",
    "",
]


@pytest.mark.parametrize(
    ("uri", "outcome"),
    [(uri, "builds") for uri in BUILDS] + [(uri, "refused") for uri in REFUSED],
    ids=lambda value: value.replace(str(CLOSED_PORT), "PORT"),  # the same in every xdist worker
)
@pytest.mark.parametrize("key", ["tracking_uri", "auth.host"])
def test_a_config_that_validates_also_builds(
    tmp_path: Path, key: str, uri: str, outcome: str
) -> None:
    """A value is refused naming its key, or the source's engine builds and a pass against it
    fails only as a source error (nothing listens there), never as a crash: which one, each case
    says."""
    source: dict = {
        "name": "a", "type": "mlflow", "experiments": ["e"], "max_retries": 0, "timeout": "5s",
        "tracking_uri": f"http://127.0.0.1:{CLOSED_PORT}",
    }  # fmt: skip
    if key == "auth.host":
        source["auth"] = {"type": "databricks", "host": uri, "client_id": "c",
                          "client_secret": "s"}  # fmt: skip
    else:
        source["tracking_uri"] = uri
    document = {"mirror": {"root": str(tmp_path / "root"), "state": str(tmp_path / "s.db")},
                "sources": [source]}  # fmt: skip
    if outcome == "refused":
        with pytest.raises(ConfigError) as raised:
            parse_settings(json.dumps(document), origin="my.yaml")
        assert str(raised.value).startswith(f"my.yaml: sources[0].{key}: "), str(raised.value)
        assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)
        return
    settings = parse_settings(json.dumps(document), origin="my.yaml")
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    try:
        engine = build_engine(settings.sources[0], journal)
        try:
            report = engine.run_pass()
        finally:
            engine.close()
    finally:
        journal.close()
    assert report.failure is not None and "unexpected" not in str(report.failure), report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("ui_url: 'http://mlflow:50o0'", "sources[0].ui_url: expected a port from 1 to 65535"),
        ("ui_url: 'http://x/#/a'", "sources[0].ui_url: expected a URL without a query"),
        ("poll_interval: .nan", "sources[0].poll_interval: expected a duration"),
        ("poll_interval: .inf", "sources[0].poll_interval: expected a duration"),
        ("poll_interval: 1e400", "sources[0].poll_interval: expected a duration"),
        ("poll_interval: " + "9" * 400, "sources[0].poll_interval: expected a duration"),
        ("full_listing_interval: -5", "sources[0].full_listing_interval: expected a duration"),
        ("debounce_x: 1", "sources[0].debounce_x: unknown key"),
        ("timeout: .nan", "sources[0].timeout: expected a duration"),
        (
            "reconcile_batch: " + "9" * 30,
            "sources[0].reconcile_batch: expected an integer at most 9,223,372,036,854,775,807",
        ),
        (
            "max_requests_per_second: 1e-300",
            "sources[0].max_requests_per_second: expected a number at least 0.001",
        ),
        (
            "max_requests_per_second: .inf",
            "sources[0].max_requests_per_second: expected a number at most 1,000,000",
        ),
        ("max_retries: true", "sources[0].max_retries: expected an integer, not true or false"),
        ('experiments: ["a\\0b"]', "sources[0].experiments[0]: contains a NUL character"),
        ("artifacts: {max_file_size: -1}", "sources[0].artifacts.max_file_size: "),
        (
            "artifacts: {max_file_size: 0}",
            "sources[0].artifacts.max_file_size: expected a size greater than 0",
        ),
        (
            'auth: {type: bearer, token: "abc\\ndef"}',
            "sources[0].auth.token: expected one line (no CR, LF or NUL)",
        ),
    ],
)
def test_every_value_is_checked_and_errors_name_the_key(change: str, message: str) -> None:
    text = GOOD.replace("    poll_interval: 10s\n", "") + f"    {change}\n"
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value)
    assert "abc" not in str(raised.value)  # never a secret's value


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("tensorboard: {port: 0}", "tensorboard.port: expected an integer at least 1 (got 0)"),
        ("tensorboard: {port: 65536}", "tensorboard.port: expected an integer at most 65,535"),
        ("tensorboard: {port: '60o6'}", "tensorboard.port: expected an integer, not a string"),
        ("health: {port: 99999}", "health.port: expected an integer at most 65,535 (got 99999)"),
        ("health: {host: ''}", "health.host: expected an IPv4 address or a host name"),
        ("health: {host: '::1'}", "health.host: expected an IPv4 address or a host name"),
        ("tensorboard: {host: 'local host'}", "tensorboard.host: expected an IPv4 address"),
        ('tensorboard: {extra_args: ["--x=\\0"]}', "tensorboard.extra_args[0]: contains a NUL"),
        ("tensorboard: {reload_interval: " + "9" * 30 + "}", "tensorboard.reload_interval: "),
        ("mirror: {root: '', state: /tmp/x/s.db}", "mirror.root: expected a path"),
        ("mirror: {root: /tmp/x/logs, state: ''}", "mirror.state: expected a path"),
    ],
)
def test_every_section_value_is_checked(section: str, message: str) -> None:
    text = GOOD + section + "\n"
    if section.startswith("mirror:"):
        text = section + "\n" + GOOD[GOOD.index("sources:") :]
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value)


FAKE_PASSWORD = "pw-hunter2-in-a-yaml-line"


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (GOOD + f"    auth: {{type: basic, username: u, password: {FAKE_PASSWORD}: x}}\n", 11, 73),
        (
            GOOD + f'    auth: {{type: basic, username: u, password: "{FAKE_PASSWORD}\\q"}}\n',
            11,
            75,
        ),
        (GOOD + f"    auth:\n\ttype: basic  # {FAKE_PASSWORD}\n", 12, 1),
        (GOOD + f"    auth: {{type: basic, password: !!int {FAKE_PASSWORD}}}\n", 11, 35),
        (GOOD + f"    auth: {{type: basic, password: !!python/name:{FAKE_PASSWORD} x}}\n", 11, 35),
        (GOOD + f"    password: *{FAKE_PASSWORD}\n", 11, 15),
        (GOOD + f"---\npassword: {FAKE_PASSWORD}\n", 11, 1),
        ("[" * 5000 + FAKE_PASSWORD, None, None),
    ],
)
def test_yaml_errors_name_the_line_and_column_and_never_show_its_content(
    text: str, line: int | None, column: int | None
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    message = str(raised.value)
    assert FAKE_PASSWORD not in message and "hunter2" not in message
    assert message.startswith("my.yaml: ") and "\n" not in message
    if line is not None:
        assert f"my.yaml: line {line}, column {column}: not valid YAML: " in message, message


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_run_check_and_sync_print_one_line_and_no_traceback_for_any_config_problem(
    tmp_path: Path,
) -> None:
    bad_url = GOOD.replace("http://127.0.0.1:5000/", "http://mlflow:50o0") + (
        "tensorboard: {enabled: false}\nhealth: {enabled: false}\n"
    )
    yaml_error = GOOD + f"    auth: {{type: basic, username: u, password: {FAKE_PASSWORD}: x}}\n"
    not_utf8 = GOOD.encode() + b"    experiments: ['\xff\xfe']\n"
    for name, content in [("url", bad_url), ("yaml", yaml_error), ("bytes", not_utf8)]:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        for command in ("check", "run", "sync"):
            result = tbmirror(command, "--config", str(path), timeout=60)
            assert result.returncode == 78, (command, name, result.stderr)
            assert result.stdout == "" and result.stderr.startswith(f"tbmirror: {path}: ")
            assert result.stderr.count("\n") == 1, result.stderr
            assert "Traceback" not in result.stderr and FAKE_PASSWORD not in result.stderr


WORKSPACE = (
    "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/0000/resourceGroups/rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/ws"
)


@pytest.mark.parametrize(
    ("uri", "auth", "chosen", "store"),
    [
        ("http://127.0.0.1:5000", None, "auto", "mlflow"),
        (WORKSPACE, None, "auto", "azureml"),
        ("https://adb-1.azuredatabricks.net", {"type": "azure"}, "auto", "mlflow"),
        ("https://adb-1.azuredatabricks.net", {"type": "databricks", "token": "t"}, "auto",
         "databricks"),
        (WORKSPACE, None, "mlflow", "mlflow"),
        ("http://127.0.0.1:5000", None, "databricks", "databricks"),
    ],
)  # fmt: skip
def test_the_artifact_store_follows_the_tracking_uri_and_auth(
    uri: str, auth: dict | None, chosen: str, store: str
) -> None:
    source = {"name": "a", "type": "mlflow", "tracking_uri": uri, "experiments": ["e"],
              "artifacts": {"store": chosen}} | ({"auth": auth} if auth else {})  # fmt: skip
    document = {"mirror": {"root": "/tmp/x/logs", "state": "/tmp/x/s.db"}, "sources": [source]}
    settings = parse_settings(json.dumps(document)).sources[0]
    assert with_cloud_defaults(settings).artifacts.store == store


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("artifacts: {paths: ['../x']}", "sources[0].artifacts.paths: expected folders below"),
        ("artifacts: {paths: ['a//b']}", "sources[0].artifacts.paths: expected folders below"),
        ("artifacts: {paths: ['/']}", "sources[0].artifacts.paths: expected folders below"),
        ("artifacts: {paths: [' logs']}", "sources[0].artifacts.paths: expected folders below"),
        ("artifacts: {paths: [logs, logs/tb]}", "sources[0].artifacts.paths: 'logs/tb' is inside"),
        (
            "artifacts: {paths: [logs, logs/]}",
            "sources[0].artifacts.paths: a folder is listed twice",
        ),
        ("artifacts: {paths: [a/b/c/d]}", "sources[0].artifacts: paths: 'a/b/c/d' is deeper than"),
        ("artifacts: {store: s3}", "sources[0].artifacts.store: expected one of 'auto', 'mlflow'"),
        (
            "artifacts: {max_listed: 0}",
            "sources[0].artifacts.max_listed: expected an integer at least 1",
        ),
        ("artifacts: {store: azureml}", "sources[0]: artifacts.store: azureml needs the workspace"),
    ],
)
def test_artifact_store_settings_are_checked(change: str, message: str) -> None:
    text = GOOD.replace("    poll_interval: 10s\n", "") + f"    {change}\n"
    with pytest.raises(ConfigError) as raised:
        parse_settings(text, origin="my.yaml")
    assert f"my.yaml: {message}" in str(raised.value), str(raised.value)


def test_artifact_folders_are_kept_without_slashes() -> None:
    text = GOOD + "    artifacts: {paths: ['logs/', '/tb/train']}\n"
    assert parse_settings(text).sources[0].artifacts.paths == ["logs", "tb/train"]
