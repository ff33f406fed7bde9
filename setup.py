"""The optional C speed-up of tbmirror.mirror.records; without a compiler, pure Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tbmirror.mirror._records",
            sources=["daemon/tbmirror/mirror/_records.c"],
            optional=True,  # a failed build is a warning: records.py falls back
        )
    ]
)
