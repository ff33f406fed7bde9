"""Images, figures and tables of MLflow runs (issue 11), logged with MLflow's own client into a
real `mlflow server` and read back from a real TensorBoard over HTTP. A recording proxy
(helpers/hostile_proxy.py, no fault switched on) counts what tbmirror asks the server for.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import (
    MlflowServer,
    TensorBoard,
    json_log_lines,
    mlflow_source,
    new_run,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.hostile_proxy import HostileProxy
from tbmirror.engine.mlflow.media import LoggedMedia, markdown_table, parse_step_image
from tbmirror.errors import ParseError
from tbmirror.mirror import summaries
from tbmirror.model import RunSnapshot


def picture(seed: int, size: tuple[int, int] = (16, 12)) -> np.ndarray:
    """A small RGB image, different for each seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def png_bytes(seed: int, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture(seed, size)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def sync(
    tmp_path: Path, mirror_root: Path, proxy: HostileProxy, source_name: str
) -> Callable[..., list[dict[str, Any]]]:
    """sync(experiments, **artifact settings): `tbmirror sync` through the proxy; its log lines."""

    def run(experiments: list[str], **artifacts: Any) -> list[dict[str, Any]]:
        config = write_config(
            tmp_path / "tbmirror.yaml",
            mirror_root,
            [mlflow_source(source_name, proxy.url, experiments, artifacts=artifacts)],
        )
        result = tbmirror("sync", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        return json_log_lines(result.stderr)

    return run


def images_of(tensorboard: TensorBoard, run: str, tag: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        found = tensorboard.images(run, tag)
        assert len(found) <= count, found
        return found if len(found) == count else None

    result: list[dict[str, Any]] = wait_until(ready, 30, f"{count} images of {run}/{tag}")
    return result


def logged_images(client: Any, run_id: str) -> dict[str, bytes]:
    """The run's image-series files as MLflow stored them (previews left out), by path."""
    found = {}
    for info in client.list_artifacts(run_id, "images"):
        if info.path.endswith(".png"):
            found[info.path] = Path(client.download_artifacts(run_id, info.path)).read_bytes()
    return found


def counted(config: Path) -> tuple[int, int, int]:
    """(points, images, tables) of the one experiment `tbmirror status --json` shows."""
    result = tbmirror("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    return row["points"], row["images"], row["tables"]


def test_images_figures_and_tables_arrive_once_each_and_only_new_ones_are_fetched(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    tensorboard: TensorBoard,
    proxy: HostileProxy,
    sync: Callable[..., list[dict[str, Any]]],
    source_name: str,
    experiment_name: str,
    mirror_root: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "trainer")  # stays RUNNING: looked at every pass
    client.log_metric(run_id, "loss", 0.5, step=1)
    client.log_image(run_id, picture(1), key="pred/one two", step=3)
    client.log_image(run_id, picture(2), key="pred/one two", step=5)
    client.log_image(run_id, picture(3), key="nostep")  # both at MLflow's step 0
    client.log_image(run_id, picture(4), key="nostep")
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([1, 3, 2])
    client.log_figure(run_id, figure, "plots/curve.png")
    client.log_table(run_id, {"alpha": [0.1, 0.2], "mse": [3.5, 2.25]}, "eval.json")
    run = tb_run(source_name, experiment_name, "trainer")

    [synced] = [e for e in sync([experiment_name]) if e.get("event") == "source_synced"]
    # Metric points, images (series' steps and figures) and tables counted apart, as in status.
    assert (synced["points"], synced["images"], synced["tables"]) == (1, 5, 1), synced
    assert counted(tmp_path / "tbmirror.yaml") == (1, 5, 1)
    wait_until(lambda: len(tensorboard.image_tags(run)) == 3, 30, "three image tags")
    assert tensorboard.image_tags(run) == ["nostep", "plots/curve.png", "pred/one two"]
    stored = logged_images(client, run_id)
    series = images_of(tensorboard, run, "pred/one two", 2)
    assert [entry["step"] for entry in series] == [3, 5]
    by_step = {parse_step_image(p).step: (p, data) for p, data in stored.items() if "pred" in p}  # type: ignore[union-attr]
    for entry in series:
        path, data = by_step[entry["step"]]
        assert entry["wall_time"] == parse_step_image(path).timestamp_ms / 1000  # type: ignore[union-attr]
        assert tensorboard.image_bytes(entry["query"]) == data
    assert [entry["step"] for entry in images_of(tensorboard, run, "nostep", 2)] == [0, 1]
    [curve] = images_of(tensorboard, run, "plots/curve.png", 1)
    figure_file = client.download_artifacts(run_id, "plots/curve.png")
    assert tensorboard.image_bytes(curve["query"]) == Path(figure_file).read_bytes()
    [table] = wait_until(lambda: tensorboard.text(run, "eval.json (table)"), 30, "the table")
    assert "<td>2.25</td>" in table["text"] and "<th>alpha</th>" in table["text"]
    assert tensorboard.wait_scalars(run, "loss", 1)

    run_dir = mirror_root / source_name / experiment_name / "trainer"
    sizes = {p.name: p.stat().st_size for p in run_dir.iterdir()}
    before = len(proxy.requests)
    sync([experiment_name])  # nothing new: listed, nothing downloaded, nothing written
    assert [s.target for s in proxy.requests[before:] if s.path == "/get-artifact"] == []
    assert {p.name: p.stat().st_size for p in run_dir.iterdir()} == sizes

    client.log_image(run_id, picture(5), key="pred/one two", step=7)
    client.log_table(run_id, {"alpha": [0.3], "mse": [1.5]}, "eval.json")  # appended: rewritten
    before = len(proxy.requests)
    sync([experiment_name])
    downloads = [s.target for s in proxy.requests[before:] if s.path == "/get-artifact"]
    assert len(downloads) == 2, downloads  # the new image and the table, nothing else
    assert [e["step"] for e in images_of(tensorboard, run, "pred/one two", 3)] == [3, 5, 7]
    versions = wait_until(
        lambda: (t := tensorboard.text(run, "eval.json (table)")) and len(t) == 2 and t, 30, "v2"
    )
    assert [v["step"] for v in versions] == [0, 1]
    assert "<td>1.5</td>" in versions[1]["text"] and "<td>2.25</td>" in versions[1]["text"]
    assert counted(tmp_path / "tbmirror.yaml") == (1, 6, 1)  # the table once, in its 2nd version


def test_bad_media_are_skipped_once_runs_keep_their_other_data_and_leave_with_their_images(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    tensorboard: TensorBoard,
    proxy: HostileProxy,
    sync: Callable[..., list[dict[str, Any]]],
    source_name: str,
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "messy")
    client.log_metric(run_id, "acc", 0.75, step=1)
    client.log_image(run_id, picture(7), key="good", step=1)
    client.log_image(run_id, picture(6), key="acc", step=1)  # a metric's name too
    now_ms = 1_790_000_000_000
    uploads = tmp_path / "uploads"
    (uploads / "images").mkdir(parents=True)
    (uploads / "figures").mkdir()
    corrupt = f"bad+step+2+timestamp+{now_ms}+{uuid.uuid4()}.png"
    (uploads / "images" / corrupt).write_bytes(png_bytes(8)[:-30])  # cut short
    old_style = f"old#key%step%4%timestamp%{now_ms + 1000}%{uuid.uuid4()}.png"
    (uploads / "images" / old_style).write_bytes(png_bytes(9))  # MLflow 3 refuses to serve "#"
    later = f"good+step+4+timestamp+{now_ms + 1000}+{uuid.uuid4()}.png"
    (uploads / "images" / later).write_bytes(png_bytes(9))
    (uploads / "figures" / "a.png").write_bytes(png_bytes(10))
    (uploads / "figures" / "big.png").write_bytes(png_bytes(12, (400, 400)))  # over the limit
    (uploads / "figures" / "c.png").write_bytes(png_bytes(11))  # past max_images: 2
    (uploads / "scores.parquet").write_bytes(b"PAR1 not shown PAR1")
    client.log_artifacts(run_id, str(uploads))
    tables = [{"path": "scores.parquet", "type": "table"}]
    client.set_tag(run_id, "mlflow.loggedArtifacts", json.dumps(tables))
    client.set_terminated(run_id)

    untagged = new_run(client, experiment_name, "untagged")  # images/ without the tag
    client.log_artifact(untagged, str(uploads / "images" / later), "images")
    client.set_terminated(untagged)

    settings = {"max_images": 2, "max_media_size": "20KiB"}
    logs = sync([experiment_name], **settings)
    skipped = sorted(line["path"] for line in logs if line.get("event") == "artifact_skipped")
    expected = ["figures/big.png", f"images/{corrupt}", f"images/{old_style}", "scores.parquet"]
    assert skipped == expected, logs
    assert [line["event"] for line in logs].count("run_images_limited") == 1
    run = tb_run(source_name, experiment_name, "messy")
    wait_until(lambda: len(tensorboard.image_tags(run)) == 3, 30, "the images that are fine")
    assert tensorboard.image_tags(run) == ["acc (image)", "figures/a.png", "good"]
    assert tensorboard.wait_scalars(run, "acc", 1)
    [first, second] = images_of(tensorboard, run, "good", 2)
    assert (first["step"], second["step"], second["wall_time"]) == (1, 4, now_ms / 1000 + 1)
    listed = [s.target for s in proxy.requests if "artifacts/list" in s.path]
    assert any(f"run_id={run_id}" in t and "path=images" in t for t in listed)
    assert not any(f"run_id={untagged}" in t and "path=images" in t for t in listed)
    assert tensorboard.image_tags(tb_run(source_name, experiment_name, "untagged")) == []

    again = sync([experiment_name], **settings)  # each skipped once, with one warning
    assert not [line for line in again if line.get("level") == "warning"], again

    client.delete_run(run_id)
    sync([experiment_name], **settings)
    wait_until(lambda: run not in tensorboard.image_tags(run) and run not in tensorboard.runs(),
               30, "the deleted run to leave TensorBoard")  # fmt: skip


def test_hparams_rows_are_named_by_run_name_and_kept_unique(
    mlflow_server: MlflowServer,
    tensorboard: TensorBoard,
    sync: Callable[..., list[dict[str, Any]]],
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    ids = {}
    for name, alpha in (("twin", 0.1), ("twin", 0.2), ("solo", 0.3)):
        run_id = new_run(client, experiment_name, name)
        client.log_param(run_id, "alpha", alpha)
        client.log_metric(run_id, "mse", alpha * 10)
        client.set_terminated(run_id)
        ids[alpha] = run_id
    sync([experiment_name])

    def groups() -> dict[str, Any]:
        return {
            group["name"]: group["hparams"]["alpha"]
            for group in tensorboard.session_groups()
            if group["sessions"] and experiment_name in group["sessions"][0]["name"]
        }

    found = wait_until(lambda: len(g := groups()) == 3 and g, 30, "three HParams rows")
    assert found["solo"] == 0.3
    first_twin = "twin" if found.get("twin") == 0.1 else f"twin ({ids[0.1][:8]})"
    second_twin = "twin" if first_twin != "twin" else f"twin ({ids[0.2][:8]})"
    assert (found[first_twin], found[second_twin]) == (0.1, 0.2)


def test_step_image_names_tables_and_logged_tags_are_read_strictly() -> None:
    assert parse_step_image("images/a~b c+step+12+timestamp+1700000000123+x-y.png") == (
        parse_step_image("images/a#b c%step%12%timestamp%1700000000123%x-y.png")
    )
    parsed = parse_step_image("images/a~b c+step+12+timestamp+1700000000123+x-y.png")
    assert parsed is not None and (parsed.key, parsed.step) == ("a/b c", 12)
    assert parsed.timestamp_ms == 1700000000123
    for other in (
        "images/a+step+1+timestamp+2+u+compressed.webp",  # MLflow UI's preview
        "images/a+step+1+timestamp+2+u.jpg",
        "other/a+step+1+timestamp+2+u.png",  # outside images/
        "images/a+step+99999999999999999999+timestamp+2+u.png",  # past int64
        "images/plain.png",
    ):
        assert parse_step_image(other) is None, other

    huge = io.BytesIO()
    Image.new("L", (6000, 5000)).save(huge, "PNG")  # 30M pixels in ~30 KB: refused unread
    with pytest.raises(summaries.BadImageError, match="more than 25,000,000"):
        summaries.image("x", huge.getvalue(), 0.0, 0)
    assert summaries.image("x", png_bytes(1), 0.0, 0)

    table = json.dumps({"columns": ["a", "b|c"], "data": [[i, f"x\n{i}"] for i in range(5)]})
    markdown = markdown_table(table.encode(), 2)
    assert markdown.splitlines()[:4] == ["| a | b\\|c |", "| --- | --- |", "| 3 | x 3 |",
                                         "| 4 | x 4 |"]  # fmt: skip
    assert "*The last 2 of 5 rows.*" in markdown
    deep = b'{"columns": ["a"], "data": [' + b"[" * 5000 + b"]" * 5001 + b"}"  # issue 28
    for bad in (b"[1, 2]", b'{"columns": ["a"], "data": [1]}', b"\xff", b"{", deep):
        with pytest.raises(ParseError):
            markdown_table(bad, 10)

    def run_with(tags: dict[str, str]) -> RunSnapshot:
        return RunSnapshot("r", "0", "r", "FINISHED", "active", 0, 0, None, tags=tags)

    logged = LoggedMedia.of(run_with({"mlflow.loggedArtifacts": '[{"path": "t.json", "type": '
                                      '"table"}, {"path": 3, "type": "table"}, "x"]'}))  # fmt: skip
    assert logged == LoggedMedia(False, ("t.json",))
    assert LoggedMedia.of(run_with({"mlflow.loggedArtifacts": "{not json"})) is None
    assert LoggedMedia.of(run_with({"mlflow.loggedArtifacts": "[" * 1500})) is None  # issue 28
    assert LoggedMedia.of(run_with({"mlflow.loggedImages": "True"})) == LoggedMedia(True, ())
