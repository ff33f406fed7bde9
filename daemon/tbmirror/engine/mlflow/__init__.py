"""The engine of an MLflow source, split by job: placement, planning, encoding, artifacts."""
