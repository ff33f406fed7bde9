"""TensorBoard event files: TFRecord framing, file names, and reading records back.

A record is `uint64 length | uint32 masked_crc(length) | payload | uint32 masked_crc(payload)`,
little-endian. The payload is a serialized `Event` proto. Writing them is the journal's.

`compiled` is the optional C extension (`_records.c`, built by setup.py when a C compiler is at
hand): records framed (here) and scanned (records.py) in C; None for pure Python (the same
bytes), when it is not built (or built for another Python) or TBMIRROR_PURE_PYTHON=1.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import google_crc32c

from tbmirror.errors import MirrorError

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_HEADER_SIZE = _HEADER.size
_MASK_DELTA = 0xA282EAD8
EVENTS_PREFIX = "events.out.tfevents."
# The longest record read: a length above it is corruption (a forged or garbled header), not a
# record whose rest is yet to come. 64 MiB was protobuf's default limit on a message for most of
# TensorBoard's life; its writers' records (images, audio, tensors) stay far below it.
MAX_RECORD_BYTES = 64 * 1024**2


def _extension() -> ModuleType | None:
    if os.environ.get("TBMIRROR_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module("tbmirror.mirror._records")
    except ImportError:
        return None


compiled = _extension()  # tests set it to None for the pure-Python path


def masked_crc(data: bytes) -> int:
    """CRC32C of `data`, masked as TFRecord does."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord holding `payload`."""
    header = _LENGTH.pack(len(payload))
    return b"".join(
        (header, _CRC.pack(masked_crc(header)), payload, _CRC.pack(masked_crc(payload)))
    )


class CorruptRecordError(Exception):
    """A record whose length or payload CRC does not check out, at byte `offset`."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"corrupt record at byte {offset}")
        self.offset = offset


class EventsFileLostError(MirrorError):
    """A mirrored file is missing or shorter than what was committed: its run must be redone."""


@dataclass(frozen=True, slots=True)
class Record:
    payload: bytes
    end: int  # byte offset just past this record


def iter_records(data: bytes, start: int = 0) -> Iterator[Record]:
    """Whole, CRC-checked records of `data` from `start`; stops silently at a partial last record.

    Raises CorruptRecordError at the first record that does not check out (a CRC, or a length
    above MAX_RECORD_BYTES).
    """
    offset, size = start, len(data)
    while size - offset >= _HEADER_SIZE:
        length, header_crc = _HEADER.unpack_from(data, offset)
        if masked_crc(data[offset : offset + _LENGTH.size]) != header_crc:
            raise CorruptRecordError(offset)
        if length > MAX_RECORD_BYTES:
            raise CorruptRecordError(offset)
        end = offset + _HEADER_SIZE + length + _CRC.size
        if end > size:
            return
        payload = data[offset + _HEADER_SIZE : end - _CRC.size]
        if masked_crc(payload) != _CRC.unpack_from(data, end - _CRC.size)[0]:
            raise CorruptRecordError(offset)
        yield Record(payload, end)
        offset = end


def iter_file_records(path: Path, chunk_bytes: int = 8 * 1024**2) -> Iterator[Record]:
    """`iter_records` over a file read `chunk_bytes` at a time (memory stays bounded by the
    chunk and the largest record, whatever the file's size); `end` counts from the file's start."""
    with path.open("rb") as file:
        data, base = b"", 0
        while chunk := file.read(chunk_bytes):
            data += chunk
            end = 0
            try:
                for record in iter_records(data):
                    end = record.end
                    yield Record(record.payload, base + end)
            except CorruptRecordError as error:
                raise CorruptRecordError(base + error.offset) from None
            data, base = data[end:], base + end


def new_file_name(not_before_secs: int = 0) -> str:
    """A fresh events file name, `events.out.tfevents.<10-digit secs>.<host>.<pid>.<seq>`.

    `not_before_secs` lets the caller keep name order equal to creation order in one directory.
    """
    secs = max(int(time.time()), not_before_secs)
    host = socket.gethostname().replace("/", "_") or "localhost"
    return f"{EVENTS_PREFIX}{secs:010d}.{host}.{os.getpid()}.{next(_sequence)}"


def file_secs(name: str) -> int:
    """The creation seconds encoded in one of our file names (0 if it has none)."""
    field = name.removeprefix(EVENTS_PREFIX).split(".", 1)[0]
    return int(field) if field.isdigit() else 0


def _counter() -> Iterator[int]:
    value = 0
    while True:
        value += 1
        yield value


_sequence = _counter()


def frame_all(payloads: Iterable[bytes]) -> bytes:
    """Records holding `payloads`, one after the other."""
    if compiled is not None:
        return bytes(compiled.frame_all(list(payloads)))
    return b"".join(frame(payload) for payload in payloads)
