"""Fetch, once, what the tests need from the network (helpers/prepared.py): Azurite from npm and
the azureml-mlflow wire models from PyPI. Run before the tests: `.venv/bin/python tests/prepare.py`.
"""

from __future__ import annotations

from helpers.prepared import CACHE, download_azureml_models, install_azurite

if __name__ == "__main__":
    install_azurite()
    download_azureml_models()
    print(f"prepared in {CACHE}")
