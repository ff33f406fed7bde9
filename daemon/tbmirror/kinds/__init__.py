"""Source kinds as plug-ins: one module or package per kind (`mlflow`, `uploads`), each offering
a `SourceKind` (base.py). tbmirror.app holds the registry; nothing else asks a source's settings
what kind they are. See docs/architecture.md, "Adding a kind of source"."""
