"""tbmirror: mirror experiment tracking run history into an always-on TensorBoard."""

__version__ = "0.1.0"
