"""A volume as the kubelet writes a ConfigMap or Secret: for the config watch and secret
rotation tests."""

from __future__ import annotations

import os
import time
from pathlib import Path


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume (atomic_writer.go):
    `<dir>/..<timestamp>/<key>` holds the data, `..data` links to it and `<dir>/<key>` links
    through `..data/<key>`. `update` writes a new timestamped directory, points `..data_tmp` at
    it, renames that over `..data` and removes the old directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._version = 0

    def update(self, files: dict[str, str]) -> None:
        self._version += 1
        stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._version}"
        (self.directory / stamp).mkdir()
        for key, text in files.items():
            (self.directory / stamp / key).write_text(text)
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        (self.directory / "..data_tmp").symlink_to(stamp)
        os.replace(self.directory / "..data_tmp", data)
        for key in files:
            if not (self.directory / key).is_symlink():
                (self.directory / key).symlink_to(f"..data/{key}")
        if old is not None:
            for path in (self.directory / old).iterdir():
                path.unlink()
            (self.directory / old).rmdir()
