"""Whole, valid Event records at the start of tfevents bytes: what tailing may copy verbatim.

A record is taken only if both its CRCs check out and `Event.FromString` accepts its payload
(TensorBoard's loaders stop at a record they cannot parse). Two paths, one answer:

- the compiled scan (`_records.c`, built by setup.py when a C compiler is at hand; events.py loads
  it): CRC32C in C,
  and a wire-format walk that vouches for a payload only when that parse is sure to accept it,
  against a table built here from Event's descriptors; a payload it cannot vouch for (rare: an
  unusual encoding, deep nesting, a corrupt one) is parsed here;
- pure Python (no extension, or TBMIRROR_PURE_PYTHON=1): `events.iter_records`, each payload
  parsed.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from types import ModuleType

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from tensorboard.compat.proto.event_pb2 import Event

from tbmirror.mirror import events


@dataclass(frozen=True, slots=True)
class Scan:
    """The whole, valid records at the start of some bytes."""

    end: int  # how far they reach
    count: int
    corrupt: bool  # stopped at a record that does not check out (at `end`), not at the end


def scan(data: bytes) -> Scan:
    """The whole, valid records at the start of `data`: up to the end, a torn last record (its
    rest may still come) or a corrupt one (a CRC that does not check out, a length above
    events.MAX_RECORD_BYTES, or a payload that is no Event)."""
    compiled = events.compiled
    return _scan_compiled(data, compiled) if compiled is not None else _scan_python(data)


def _scan_python(data: bytes) -> Scan:
    end = count = 0
    try:
        for record in events.iter_records(data):
            if not _parses(record.payload):
                return Scan(end, count, corrupt=True)
            end, count = record.end, count + 1
    except events.CorruptRecordError:
        return Scan(end, count, corrupt=True)
    return Scan(end, count, corrupt=False)


def _scan_compiled(data: bytes, extension: ModuleType) -> Scan:
    end = count = 0
    while True:
        end, found, stop = extension.scan(data, end, _SCHEMA, events.MAX_RECORD_BYTES)
        count += found
        if stop != extension.CHECK:
            return Scan(end, count, corrupt=stop == extension.CORRUPT)
        record = next(events.iter_records(data, end))  # whole, and its CRCs check out
        if not _parses(record.payload):
            return Scan(end, count, corrupt=True)
        end, count = record.end, count + 1


def _parses(payload: bytes) -> bool:
    try:
        Event.FromString(payload)
    except DecodeError:
        return False
    return True


# --- the table the compiled scan checks payloads against (_records.c: kinds, layout) ---------

SKIP, OPAQUE, VARINT, FIXED64, FIXED32, BYTES, STRING, MESSAGE = range(8)
MAX_WIDTH = 256  # entries per row; a message declaring a field number past it is never vouched for
_SCALARS = {
    getattr(FieldDescriptor, f"TYPE_{name}"): kind
    for kind, names in (
        (VARINT, "INT32 INT64 UINT32 UINT64 SINT32 SINT64 BOOL ENUM"),
        (FIXED64, "DOUBLE FIXED64 SFIXED64"),
        (FIXED32, "FLOAT FIXED32 SFIXED32"),
        (BYTES, "BYTES"),
        (STRING, "STRING"),
    )
    for name in names.split()
}


def wire_schema(root: Descriptor) -> bytes:
    """The table of `root` and every message type it nests: uint32 `width`, then one row of
    `width` entries per type (`root`'s first). Entry n: how field number n is checked, its kind
    | the row of its message type << 8; entry 0: how undeclared field numbers are (SKIP, as
    protobuf skips unknown fields; OPAQUE where they could be extensions or past the width).

    Groups are OPAQUE. Scalars need no label: a packed run of a singular field is an unknown
    field to the parser, accepted whatever it holds.
    """
    types = [root]
    rows = {root.full_name: 0}
    for message in types:  # grows while walked: breadth first
        for field in message.fields:
            nested = field.message_type
            if field.type == FieldDescriptor.TYPE_MESSAGE and nested.full_name not in rows:
                rows[nested.full_name] = len(types)
                types.append(nested)
    numbers = [field.number for message in types for field in message.fields]
    width = min(MAX_WIDTH, max(numbers, default=0) + 1)
    table = array("I", [width])
    for message in types:
        beyond = message.extension_ranges or any(f.number >= width for f in message.fields)
        row = [OPAQUE if beyond else SKIP] * width
        for field in message.fields:
            if field.number < width:
                row[field.number] = _kind(field, rows)
        table.extend(row)
    return table.tobytes()


def _kind(field: FieldDescriptor, rows: dict[str, int]) -> int:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return MESSAGE | rows[field.message_type.full_name] << 8
    return _SCALARS.get(field.type, OPAQUE)


_SCHEMA = wire_schema(Event.DESCRIPTOR)
