"""Fetch, once, what the tests need from the network: Azurite from npm and the azureml-mlflow wire
models from PyPI (helpers/prepared.py), prometheus-operator's CRD schemas from npm
(helpers/prometheus_operator.py). Run before the tests: `.venv/bin/python tests/prepare.py`.
"""

from __future__ import annotations

from helpers import prometheus_operator
from helpers.prepared import CACHE, download_azureml_models, install_azurite

if __name__ == "__main__":
    install_azurite()
    download_azureml_models()
    prometheus_operator.install()
    print(f"prepared in {CACHE}")
