"""Native TensorBoard logs of Azure ML and Databricks runs, tailed from blob storage.

Runs and metrics live in the session's real `mlflow server`; the runs' artifacts are blobs in a
real Azurite, read through real SAS URLs that Azurite checks. Between tbmirror and both sit the
stand-ins of helpers/cloud_standins.py for the two cloud services no test can reach (Azure ML's
run history artifact service, Databricks' MLflow API with its credential service), whose answers
tests/test_cloud_standins.py checks against the real clients' wire models. What tbmirror mirrored
is read back from a real TensorBoard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import (
    MlflowServer,
    TensorBoard,
    TensorBoardReader,
    daemon_config,
    json_log_lines,
    mlflow_source,
    new_run,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.hostile_proxy import hostile_proxy
from tbmirror.app import build_engine
from tbmirror.config import load_settings
from tbmirror.journal import Journal
from tbmirror.mirror import events, summaries
from tbmirror.mirror.layout import MirrorLayout

LOG_NAME = "events.out.tfevents.1700000000.job.1.0"


def tfevents(start: int, count: int, value: float = 0.5) -> bytes:
    """Records of a tfevents file: the file_version record first when `start` is 0, then scalar
    `loss` at steps start .. start+count-1."""
    encoder = summaries.ScalarEncoder("loss")
    head = events.frame(summaries.file_version(1.7e9)) if start == 0 else b""
    return head + b"".join(
        events.frame(encoder.encode(1.7e9 + step, step, value * step))
        for step in range(start, start + count)
    )


def azure_source(name: str, workspace: Any, experiment: str, **settings: Any) -> dict[str, Any]:
    """A source on the Azure ML stand-in: its workspace tracking URI, its bearer token."""
    return mlflow_source(
        name, workspace.tracking_uri, [experiment],
        auth={"type": "bearer", "token": workspace.token}, **settings,
    )  # fmt: skip


def run_sync(tmp_path: Path, root: Path, source: dict[str, Any]) -> Any:
    config = write_config(tmp_path / "tbmirror.yaml", root, [source])
    return tbmirror("sync", "--config", str(config))


def no_signed_url(text: str) -> None:
    """Nothing of a SAS token: its signature, expiry or permission parameters."""
    assert "sig=" not in text and "se=" not in text and "sp=r" not in text, text[-2000:]


def test_an_azureml_run_logs_are_tailed_exactly_once_into_tensorboard(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    tensorboard: TensorBoard,
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "train")
    client.log_metric(run_id, "mlflow_loss", 1.0, step=0)
    for index in range(5):  # more files than a listing page holds (the stand-in pages by 2)
        azureml_workspace.put(run_id, f"outputs/file{index}.txt", b"x")
    first = tfevents(0, 300)
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", first)
    source = azure_source(source_name, azureml_workspace, experiment_name)

    check = tbmirror("check", "--config", str(write_config(tmp_path / "c.yaml", mirror_root,
                                                          [source])))  # fmt: skip
    assert "(auth bearer, artifacts azureml, " in check.stdout, check.stdout + check.stderr
    result = run_sync(tmp_path, mirror_root, source)
    assert result.returncode == 0, result.stdout + result.stderr
    board_run = tb_run(source_name, experiment_name, "train", "logs")
    tensorboard.wait_scalars(board_run, "loss", 300)
    assert tensorboard.wait_scalars(tb_run(source_name, experiment_name, "train"), "mlflow_loss", 1)

    grown = first + tfevents(300, 200)  # the job wrote on; Azure ML uploaded the file again
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", grown)
    result = run_sync(tmp_path, mirror_root, source)
    assert result.returncode == 0, result.stdout + result.stderr
    points = tensorboard.wait_scalars(board_run, "loss", 500)
    assert [int(point[1]) for point in points] == list(range(500))
    copy = mirror_root / source_name / experiment_name / "train" / "logs" / LOG_NAME
    assert copy.read_bytes() == grown

    served = list(azureml_workspace.requests)
    listings = [path for method, path in served if path.endswith("/artifacts")]
    assert len(listings) == 2 * 3  # 6 files, 2 a page: every page, in each of the two passes
    assert not [path for _, path in served if "/prefix/" in path]
    no_signed_url(result.stdout + result.stderr)


def test_artifact_folders_bound_the_listing_and_max_listed_fails_only_that_run(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    small = new_run(client, experiment_name, "small")
    azureml_workspace.put(small, f"logs/{LOG_NAME}", tfevents(0, 10))
    for index in range(40):  # outputs listed (the whole run is), not counted against max_listed
        azureml_workspace.put(small, f"outputs/part{index:02}.bin", b"x")
    crowded = new_run(client, experiment_name, "crowded")
    for index in range(6):
        azureml_workspace.put(crowded, f"logs/extra{index}.txt", b"x")
    azureml_workspace.put(crowded, f"logs/{LOG_NAME}", tfevents(0, 10))
    source = azure_source(
        source_name, azureml_workspace, experiment_name,
        artifacts={"paths": ["logs"], "max_listed": 5},
    )  # fmt: skip

    result = run_sync(tmp_path, mirror_root, source)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert f"run {crowded}: more than artifacts.max_listed (5)" in output
    experiment = mirror_root / source_name / experiment_name
    assert (experiment / "small" / "logs" / LOG_NAME).read_bytes() == tfevents(0, 10)
    assert not (experiment / "crowded" / "logs").exists()
    served = [path for _, path in azureml_workspace.requests]
    assert not [path for path in served if "/artifacts/path" in path]  # never a folder's listing
    small_listings = [p for p in served if p.endswith(f"/runs/{small}/artifacts")]
    assert len(small_listings) == 21  # the whole run, as azureml-mlflow lists it: 41 files


def test_a_refused_signature_is_one_error_for_that_run_and_a_smaller_blob_gets_a_new_name(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    good = new_run(client, experiment_name, "good")
    revoked = new_run(client, experiment_name, "revoked")
    for run_id in (good, revoked):
        azureml_workspace.put(run_id, f"logs/{LOG_NAME}", tfevents(0, 50))
    azureml_workspace.bad_signature_runs = {revoked}  # a signature the storage refuses: no expiry
    source = azure_source(source_name, azureml_workspace, experiment_name)

    result = run_sync(tmp_path, mirror_root, source)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    refused = [line for line in output.splitlines() if "refused a freshly signed URL" in line]
    assert len(refused) == 1 and revoked in refused[0], output
    assert "Traceback" not in output
    no_signed_url(output)
    contentinfo = [p for _, p in azureml_workspace.requests if p.endswith("/contentinfo")]
    assert len([p for p in contentinfo if revoked in p]) == 2  # the kept URL, then one fresh one
    assert len([p for p in contentinfo if good in p]) == 1  # kept: sized and read with one URL
    experiment = mirror_root / source_name / experiment_name
    assert (experiment / "good" / "logs" / LOG_NAME).read_bytes() == tfevents(0, 50)

    smaller = tfevents(0, 20, value=-1.0)  # the job started over: fewer, other records
    azureml_workspace.put(good, f"logs/{LOG_NAME}", smaller)
    result = run_sync(tmp_path, mirror_root, source)
    assert "truncated" in result.stderr
    copies = experiment / "good" / "logs"
    assert [(p.name, p.read_bytes()) for p in copies.iterdir()] == [(f"{LOG_NAME}.1", smaller)]


def test_the_daemon_renews_an_expired_sas_and_reads_on_from_the_committed_offset(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
    start_daemon: Any,
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "live")  # RUNNING: looked at every pass
    first = tfevents(0, 100)
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", first)
    azureml_workspace.sas_ttl = 2.0
    source = azure_source(
        source_name, azureml_workspace, experiment_name, poll_interval="1s",
        full_listing_interval="1s",
    )  # fmt: skip
    root = tmp_path / "root"
    config, tensorboard_url, _ = daemon_config(tmp_path / "tbmirror.yaml", root, [source])
    daemon = start_daemon(config)
    board = TensorBoardReader(tensorboard_url)  # the daemon's own TensorBoard
    wait_until(board.answers, 60, "the daemon's TensorBoard")
    board_run = tb_run(source_name, experiment_name, "live", "logs")
    board.wait_scalars(board_run, "loss", 100, timeout=60)

    time.sleep(azureml_workspace.sas_ttl + 2)  # the kept SAS has expired
    grown = first + tfevents(100, 50)
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", grown)
    points = board.wait_scalars(board_run, "loss", 150, timeout=60)
    assert [int(point[1]) for point in points] == list(range(150))
    copy = root / source_name / experiment_name / "live" / "logs" / LOG_NAME
    wait_until(lambda: copy.read_bytes() == grown, 30, "the whole grown file mirrored")
    contentinfo = [p for _, p in azureml_workspace.requests if p.endswith("/contentinfo")]
    assert len(contentinfo) >= 2  # the first SAS, then a fresh one once Azurite refused it
    assert daemon.stop() == 0
    log = daemon.log_path.read_text()
    no_signed_url(log)
    assert not [e for e in json_log_lines(log) if e.get("level") == "error"], log[-3000:]


def test_a_databricks_run_logs_and_figures_are_read_through_signed_urls(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    databricks_workspace: Any,
    tensorboard: TensorBoard,
    source_name: str,
    experiment_name: str,
) -> None:
    from PIL import Image

    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "notebook")
    experiment_id = client.get_run(run_id).info.experiment_id
    first = tfevents(0, 200)
    databricks_workspace.put(experiment_id, run_id, f"tb/{LOG_NAME}", first)
    picture = tmp_path / "loss.png"
    Image.new("RGB", (8, 8), (200, 20, 20)).save(picture)
    databricks_workspace.put(experiment_id, run_id, "plots/loss.png", picture.read_bytes())
    source = mlflow_source(
        source_name, databricks_workspace.host, [experiment_name],
        auth={"type": "databricks", "token": databricks_workspace.token},
    )  # fmt: skip

    result = run_sync(tmp_path, mirror_root, source)
    assert result.returncode == 0, result.stdout + result.stderr
    board_run = tb_run(source_name, experiment_name, "notebook", "tb")
    tensorboard.wait_scalars(board_run, "loss", 200)
    grown = first + tfevents(200, 100)
    databricks_workspace.put(experiment_id, run_id, f"tb/{LOG_NAME}", grown)
    result = run_sync(tmp_path, mirror_root, source)
    assert result.returncode == 0, result.stdout + result.stderr
    points = tensorboard.wait_scalars(board_run, "loss", 300)
    assert [int(point[1]) for point in points] == list(range(300))
    copy = mirror_root / source_name / experiment_name / "notebook" / "tb" / LOG_NAME
    assert copy.read_bytes() == grown
    run = tb_run(source_name, experiment_name, "notebook")
    wait_until(lambda: tensorboard.image_tags(run), 30, "the figure in TensorBoard")
    [shown] = tensorboard.images(run, tensorboard.image_tags(run)[0])
    assert tensorboard.image_bytes(shown["query"]) == picture.read_bytes()
    credentials = [
        p for _, p in databricks_workspace.requests if p.endswith("credentials-for-read")
    ]
    assert credentials  # bytes came through signed URLs, not /get-artifact
    assert not [p for _, p in databricks_workspace.requests if "get-artifact" in p]
    no_signed_url(result.stdout + result.stderr)


def test_a_storage_that_lies_or_hangs_fails_the_run_and_never_touches_the_copy(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    azurite: Any,
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "job")
    first = tfevents(0, 50)
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", first)
    source = azure_source(source_name, azureml_workspace, experiment_name, timeout="3s")
    copy = mirror_root / source_name / experiment_name / "job" / "logs" / LOG_NAME
    with hostile_proxy(azurite.origin) as storage:
        azureml_workspace.storage_origin = storage.url  # SAS URLs lead through the proxy
        result = run_sync(tmp_path, mirror_root, source)
        assert result.returncode == 0, result.stdout + result.stderr
        assert copy.read_bytes() == first
        grown = first + tfevents(50, 50)
        azureml_workspace.put(run_id, f"logs/{LOG_NAME}", grown)
        for fault, said in [
            ("html", "(text/html; charset=utf-8)"),
            ("redirect", "redirect (an expired login session, or a proxy in the way?)"),
            ("trickle", "no complete answer within the timeout"),
            ("reset", f"GET {storage.url}/devstoreaccount1/azureml/"),  # (whatever the OS says)
        ]:
            storage.set(fault, path="/logs/")
            started = time.monotonic()
            result = run_sync(tmp_path, mirror_root, source)
            output = result.stdout + result.stderr
            assert result.returncode == 1 and said in output, (fault, output[-1500:])
            assert time.monotonic() - started < 60, fault  # deadlines hold: never a hung pass
            assert "Traceback" not in output
            no_signed_url(output)
            assert copy.read_bytes() == first, fault  # what was mirrored stays
            storage.clear()
        result = run_sync(tmp_path, mirror_root, source)
        assert result.returncode == 0, result.stdout + result.stderr
        assert copy.read_bytes() == grown


def test_old_azureml_runs_are_listed_through_the_same_backlog(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
    start_daemon: Any,
) -> None:
    client = mlflow_server.client()
    runs = []
    for index in range(3):  # finished runs never looked at: their listings wait in the backlog
        run_id = new_run(client, experiment_name, f"old{index}")
        client.log_metric(run_id, "m", float(index), step=0)
        azureml_workspace.put(run_id, f"logs/{LOG_NAME}", tfevents(0, 2))
        client.set_terminated(run_id)
        runs.append(run_id)
    source = azure_source(
        source_name, azureml_workspace, experiment_name, poll_interval="1s",
        full_listing_interval="1s", artifacts={"batch": 1},
    )  # fmt: skip
    root = tmp_path / "root"
    config, _, _ = daemon_config(
        tmp_path / "tbmirror.yaml", root, [source], tensorboard={"enabled": False}
    )
    daemon = start_daemon(config)
    first = daemon.wait_event("source_synced", source=source_name)
    assert first["runs"] == 3 and first["points"] >= 3  # every run's metrics in the first pass
    experiment = root / source_name / experiment_name
    wait_until(
        lambda: len(list(experiment.glob("old*/logs/*"))) == 3,
        120,
        "a copy of each old run's log",
        saw=lambda: sorted(str(p.relative_to(experiment)) for p in experiment.rglob("*")),
    )
    assert daemon.stop() == 0
    # A pass lists its runs first, then takes from the backlog: the runs whose artifacts were
    # listed between two run listings are one pass's, and `batch: 1` lets that be one run.
    per_pass: list[set[str]] = [set()]
    for _, path in azureml_workspace.requests:
        if path.endswith("/runs/search") and per_pass[-1]:
            per_pass.append(set())
        elif path.endswith("/artifacts"):
            per_pass[-1].add(next(run_id for run_id in runs if f"/runs/{run_id}/" in path))
    assert all(len(listed) <= 1 for listed in per_pass), per_pass
    assert set().union(*per_pass) == set(runs), per_pass


def test_a_signed_url_is_kept_from_pass_to_pass_while_it_works(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
) -> None:
    """In one process (as in the daemon), a growing file's SAS is asked for once, however many
    passes read it; the daemon test above shows a refused one renewed."""
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "live")
    data = tfevents(0, 10)
    azureml_workspace.put(run_id, f"logs/{LOG_NAME}", data)
    source = azure_source(source_name, azureml_workspace, experiment_name)
    config = write_config(tmp_path / "tbmirror.yaml", tmp_path / "root", [source])
    settings = load_settings(config)
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(source_name)
    engine = build_engine(settings.sources[0], journal)
    try:
        for grown in range(3):
            report = engine.run_pass()
            assert report.failure is None and not report.failed_runs, report
            data += tfevents(10 + 5 * grown, 5)
            azureml_workspace.put(run_id, f"logs/{LOG_NAME}", data)
        report = engine.run_pass()
    finally:
        engine.close()
        journal.close()
    copy = tmp_path / "root" / source_name / experiment_name / "live" / "logs" / LOG_NAME
    assert copy.read_bytes() == data
    contentinfo = [p for _, p in azureml_workspace.requests if p.endswith("/contentinfo")]
    assert len(contentinfo) == 1, contentinfo


def test_azureml_lists_like_its_client_and_an_idle_pass_costs_only_the_listing(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    azureml_workspace: Any,
    source_name: str,
    experiment_name: str,
) -> None:
    """Issue 28 defect 7, in one process (as in the daemon): the whole run is listed, as
    azureml-mlflow lists it (so `logs/eval/`, below a folder of `artifacts.paths`, is found
    whatever a folder's listing would hold), each next page from its `nextLink` as given (the
    stand-in refuses a token sent without it); a pass over 10 unchanged log files costs their
    listing and nothing else: no contentinfo, no probe of a blob (on main: 10 of each)."""
    azureml_workspace.linked_pages = True
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "quiet")
    names = [f"logs/eval/{LOG_NAME}.{i}" if i < 3 else f"logs/{LOG_NAME}.{i}" for i in range(10)]
    for name in names:
        azureml_workspace.put(run_id, name, tfevents(0, 5))
    source = azure_source(source_name, azureml_workspace, experiment_name,
                          artifacts={"paths": ["logs"]})  # fmt: skip
    config = write_config(tmp_path / "tbmirror.yaml", tmp_path / "root", [source])
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(source_name)
    engine = build_engine(load_settings(config).sources[0], journal)
    try:
        first = engine.run_pass()
        assert first.failure is None and not first.failed_runs, first
        before = len(azureml_workspace.requests)
        idle = engine.run_pass(full=True, reconcile_all=True)
        assert idle.failure is None and not idle.failed_runs, idle
    finally:
        engine.close()
        journal.close()
    run_dir = tmp_path / "root" / source_name / experiment_name / "quiet"
    for name in names:
        assert (run_dir / name).read_bytes() == tfevents(0, 5), name
    served = [path for _, path in azureml_workspace.requests[before:]]
    assert not [path for path in served if "/artifacts/" in path], served  # no contentinfo
    listings = [path for path in served if path.endswith(f"/runs/{run_id}/artifacts")]
    assert len(listings) == 5, served  # 10 files, 2 a page
    storage = idle.requests - len(served)  # requests the stand-in did not see: blob reads
    assert storage == 0, f"{storage} requests to the blob storage in an idle pass"
