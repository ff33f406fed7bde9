#!/usr/bin/env python3
"""Write monitoring/prometheusrule.yaml (or the path given): a PrometheusRule whose groups are
those of deploy/prometheus/rules.yml, the one source of truth (tests/test_kubernetes.py checks
the tracked file is what this writes). Run it after changing the rules:
    .venv/bin/python deploy/kubernetes/generate-prometheusrule.py [OUTPUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
OUTPUT = HERE / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/rules.yml by deploy/kubernetes/generate-prometheusrule.py:"
    "\n# edit the rules there, then run the script.\n"
)


def prometheus_rule(rules_file: Path = RULES) -> dict[str, object]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tbmirror", "labels": {"app.kubernetes.io/name": "tbmirror"}},
        "spec": {"groups": groups},
    }


def main(argv: list[str]) -> None:
    output = Path(argv[0]) if argv else OUTPUT
    text = yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100, allow_unicode=True)
    output.write_text(HEADER + text)


if __name__ == "__main__":
    main(sys.argv[1:])
