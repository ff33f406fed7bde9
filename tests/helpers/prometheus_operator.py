"""Validation of ServiceMonitor and PrometheusRule objects against prometheus-operator's CRD
schemas, as the npm package @kubernetes-models/prometheus-operator carries them (generated from
the operator's CRDs; each model's `validate()` runs the schema). Installed into
`~/.cache/tbmirror-tests/` by tests/prepare.py, like Azurite; a test never installs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.prepared import CACHE, PREPARE, npm_install

PACKAGE = "@kubernetes-models/prometheus-operator"
VERSION = "6.0.0"
KINDS = ("ServiceMonitor", "PrometheusRule")

# Reads a JSON list of objects on stdin; prints one line per object: "ok" or the schema's errors.
VALIDATE_MJS = """
const v1 = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
const { ServiceMonitor } = await import(`${v1}/ServiceMonitor`);
const { PrometheusRule } = await import(`${v1}/PrometheusRule`);
const models = { ServiceMonitor, PrometheusRule };
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  for (const object of JSON.parse(input)) {
    try {
      new models[object.kind](object).validate();
      console.log("ok");
    } catch (error) {
      console.log(`${object.kind} ${object.metadata.name}: ${error.message}`);
    }
  }
});
"""


def install(cache: Path = CACHE) -> None:
    """npm-install the package and validate.mjs into the cache (once): run by tests/prepare.py,
    never by a test."""
    npm_install(
        models_dir(cache), f"{PACKAGE}@{VERSION}",
        cache / f"prometheus-operator-models-{VERSION}.lock", {"validate.mjs": VALIDATE_MJS},
    )  # fmt: skip


def models_dir(cache: Path = CACHE) -> Path:
    return cache / f"prometheus-operator-models-{VERSION}"


def prepared(cache: Path = CACHE) -> Path:
    """The prepared package's directory; the test fails, naming the command to run, if it is
    not there."""
    directory = models_dir(cache)
    if not (directory / ".installed").exists():
        pytest.fail(f"{PACKAGE}@{VERSION} is not prepared in {cache}: run {PREPARE}")
    return directory


def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    """What the CRD schemas say is wrong with `objects` (ServiceMonitors and PrometheusRules);
    [] when each is valid."""
    directory = prepared()
    result = subprocess.run(
        ["node", str(directory / "validate.mjs")],
        input=json.dumps(objects), capture_output=True, text=True, cwd=directory, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the validator failed: {result.stderr}")
    lines = result.stdout.splitlines()
    assert len(lines) == len(objects), result.stdout
    return [line for line in lines if line != "ok"]
