"""The documentation: the site builds with no broken link or anchor, the generated pages are
current, README.md's links into docs/ resolve, and the systemd unit points at installed docs."""

from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tbmirror import config_reference
from tbmirror.config import parse_settings

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)

README = REPO / "README.md"
DOCS = REPO / "docs"
DOC_INSTALL = "/usr/share/doc/tbmirror/"  # where docs/operations/systemd.md copies them
LINK = re.compile(r"\]\(((?:docs/)[^)\s]*)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by `mkdocs build --strict` (a warning, e.g. a link to a missing page or
    anchor, fails it)."""
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return site


def test_site_builds_strictly_with_every_page(site: Path) -> None:
    pages = {p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md")}
    built = {p.parent.relative_to(site) for p in site.rglob("index.html")}
    missing = {str(p) for p in pages if (p.parent if p.name == "index" else p) not in built}
    assert not missing, f"pages not built: {sorted(missing)}"


def test_configuration_reference_is_current() -> None:
    committed = (DOCS / "reference" / "configuration.md").read_text()
    assert committed == config_reference.render(), (
        f"docs/reference/configuration.md differs from the schema: run `{config_reference.COMMAND}`"
    )


def test_benchmarks_page_is_current() -> None:
    spec = importlib.util.spec_from_file_location("report", REPO / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert (DOCS / "benchmarks.md").read_text() == report.render(), (
        f"docs/benchmarks.md differs from benchmarks/results: run `{report.COMMAND}`"
    )


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def broken_links(text: str, site: Path) -> list[str]:
    """The links of Markdown `text` into docs/ whose file, or anchor on the built page, is
    missing."""
    broken = []
    for link in LINK.findall(text):
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.is_file():
            broken.append(f"{link}: no file {path}")
            continue
        if not anchor:
            continue
        page = Path(path).relative_to("docs").with_suffix("")
        built = site / (page.parent if page.name == "index" else page) / "index.html"
        parser = _Ids()
        parser.feed(built.read_text())
        if anchor not in parser.ids:
            broken.append(f"{link}: no anchor #{anchor} in {path}")
    return broken


def test_readme_links_into_docs_resolve(site: Path) -> None:
    text = README.read_text()
    links = LINK.findall(text)
    assert len(links) >= 10, f"README.md links into docs/ only {links}"
    assert broken_links(text, site) == []
    # The check can fail: a missing page and a missing anchor are both found.
    bad = "[a](docs/nope.md) [b](docs/getting-started.md#nope) [c](docs/selection.md#see-nope)"
    assert broken_links(bad, site) == [
        "docs/nope.md: no file docs/nope.md",
        "docs/getting-started.md#nope: no anchor #nope in docs/getting-started.md",
        "docs/selection.md#see-nope: no anchor #see-nope in docs/selection.md",
    ]


def test_readme_is_a_front_page() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_systemd_unit_documentation_is_what_the_install_copies() -> None:
    """The unit's Documentation= URIs name files the install steps copy from this repository
    (README.md and docs/ into /usr/share/doc/tbmirror/)."""
    unit = (REPO / "systemd" / "tbmirror.service").read_text()
    uris = [u for line in unit.splitlines() if line.startswith("Documentation=")
            for u in line.removeprefix("Documentation=").split()]  # fmt: skip
    assert uris
    for uri in uris:
        assert uri.startswith(f"file://{DOC_INSTALL}"), uri
        assert (REPO / uri.removeprefix(f"file://{DOC_INSTALL}")).is_file(), uri
    steps = (DOCS / "operations" / "systemd.md").read_text()
    assert f"sudo cp -r README.md docs {DOC_INSTALL}" in steps


def test_quick_start_config_is_valid() -> None:
    """The quick start's YAML (README.md and Getting started) is a whole, valid config file."""
    for page in (README, DOCS / "getting-started.md"):
        blocks = re.findall(r"```yaml\n(# tbmirror\.yaml\n.*?)```", page.read_text(), re.DOTALL)
        assert len(blocks) == 1, page
        settings = parse_settings(blocks[0], origin=str(page))
        assert settings.mirror.root == Path(os.environ["HOME"]) / "tbmirror" / "logs"
        assert [source.type for source in settings.sources] == ["mlflow"]


def test_benchmark_results_say_where_and_how_they_were_measured() -> None:
    results = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert results, "no benchmark result is recorded"
    for path in results:
        document = json.loads(path.read_text())
        assert path.name.startswith(f"{document['benchmark']}-{document['date'][:10]}"), path
        assert document["command"].startswith("python "), path
        assert f"{document['benchmark']}.py" in document["command"], path
        machine = document["machine"]
        assert {"cpus", "cpu_model", "python", "tbmirror", "commit"} <= machine.keys(), path
        assert isinstance(document["load_average_1m"], float), path
        assert document["figures"] and all(f["name"] for f in document["figures"]), path
