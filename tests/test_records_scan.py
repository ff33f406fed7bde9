"""The scan of tfevents bytes that tailing copies from: the compiled path and the pure-Python one
give the same answer on the same bytes (whole valid records, a torn last record, flipped bits,
payloads that pass their CRC but are no Event), and that answer is the one TensorBoard's parse
gives. The compiled path vouches for the common records itself; the extension is optional.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable

import google_crc32c
import pytest
from google.protobuf.message import Message
from tensorboard.compat.proto.event_pb2 import Event, LogMessage, SessionLog
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto, VariantTensorDataProto

from tbmirror.mirror import events, records, summaries
from tbmirror.mirror.records import Scan

Scanner = Callable[[bytes], Scan]
PURE_PYTHON_FORCED = os.environ.get("TBMIRROR_PURE_PYTHON") == "1"


@pytest.fixture(params=["compiled", "python"])
def scan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Scanner:
    """records.scan on one path: the extension (it must be built) or pure Python."""
    if request.param == "python":
        monkeypatch.setattr(events, "compiled", None)
    else:
        skip_if_pure_python_is_forced()
    return records.scan


def skip_if_pure_python_is_forced() -> None:
    """Skip only where TBMIRROR_PURE_PYTHON=1 switches the extension off; anywhere else the
    extension must be built and loaded (`pip install -e .` builds it), or the test fails."""
    if PURE_PYTHON_FORCED:
        pytest.skip("TBMIRROR_PURE_PYTHON=1: the C extension is switched off")
    assert events.compiled is not None, (
        "the C extension tbmirror.mirror._records is not built or does not load: "
        "reinstall with `pip install -e .` (a C compiler is needed)"
    )


def both(data: bytes) -> Scan:
    """The answer of each path on `data`, checked to be the same."""
    python = records._scan_python(data)
    if events.compiled is not None:
        assert records._scan_compiled(data, events.compiled) == python
    return python


def nested(depth: int) -> bytes:
    """An Event whose tensor nests `depth` variant tensors (two message levels each), built on
    the wire: the proto classes refuse to nest deeper than the parser allows."""

    def field(message: type[Message], name: str, body: bytes) -> bytes:
        number = message.DESCRIPTOR.fields_by_name[name].number
        return varint(number << 3 | 2) + varint(len(body)) + body

    tensor = TensorProto(dtype=1, float_val=[1.5]).SerializeToString()
    for _ in range(depth):
        variant = field(VariantTensorDataProto, "tensors", tensor)
        tensor = field(TensorProto, "variant_val", variant)
    value = Summary.Value(tag="deep").SerializeToString() + field(Summary.Value, "tensor", tensor)
    return field(Event, "summary", field(Summary, "value", value))


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def payloads() -> list[bytes]:
    """One of each kind of record TensorBoard files hold."""
    noise = random.Random(0).randbytes
    histogram = HistogramProto(min=0, max=1, num=3, bucket_limit=[0.5, 1], bucket=[1, 2])
    image = Summary.Image(height=2, width=2, colorspace=3, encoded_image_string=noise(300))
    tensor = TensorProto(dtype=1, tensor_content=noise(64), string_val=[b"\xff\x00"])
    return [
        summaries.file_version(1.0),
        *(
            summaries.ScalarEncoder(tag).encode(2.0, step, step / 3)
            for tag, step in [("loss", 0), ("a/b ü", 2**40), ("日本語", -3)]
        ),
        summaries.text("notes", "*héllo* 𝄞", 3.0, 1),
        summaries.session_start({"lr": "0.1", "name": "ü"}, "trial", 1.0, 2.0),
        summaries.session_end("FINISHED", 9.0, 9.0),
        Event(
            step=1, summary=Summary(value=[Summary.Value(tag="h", histo=histogram)])
        ).SerializeToString(),
        Event(summary=Summary(value=[Summary.Value(tag="i", image=image)])).SerializeToString(),
        Event(summary=Summary(value=[Summary.Value(tag="t", tensor=tensor)])).SerializeToString(),
        Event(graph_def=noise(200)).SerializeToString(),
        Event(log_message=LogMessage(level=20, message="ok")).SerializeToString(),
        Event(session_log=SessionLog(status=1, msg="start")).SerializeToString(),
        nested(30),  # 63 levels: about as deep as the compiled check goes
        b"",  # an empty Event
    ]


def framed(payload_list: list[bytes]) -> tuple[bytes, list[int]]:
    """The records of `payload_list`, and where each starts (and the end)."""
    starts = [0]
    for payload in payload_list:
        starts.append(starts[-1] + len(events.frame(payload)))
    return events.frame_all(payload_list), starts


def test_whole_valid_records_are_taken_to_the_end(scan: Scanner) -> None:
    data, starts = framed(payloads())
    assert scan(data) == Scan(len(data), len(starts) - 1, corrupt=False)
    assert scan(b"") == Scan(0, 0, corrupt=False)


def test_a_torn_last_record_waits_wherever_it_is_cut(scan: Scanner) -> None:
    data, starts = framed(payloads())
    last = starts[-2]
    for cut in range(last, len(data)):  # header, length CRC, payload and payload CRC cut
        assert scan(data[:cut]) == Scan(last, len(starts) - 2, corrupt=False), cut


@pytest.mark.parametrize(
    "where", [0, 7, 8, 11, 12, -5, -4, -1], ids=lambda w: f"byte{w}"
)  # length, length CRC, payload, payload CRC
def test_a_flipped_bit_stops_at_its_record(scan: Scanner, where: int) -> None:
    data, starts = framed(payloads())
    index = 7  # the histogram record
    start, end = starts[index], starts[index + 1]
    position = start + where if where >= 0 else end + where
    for bit in (0, 7):
        corrupt = bytearray(data)
        corrupt[position] ^= 1 << bit
        assert scan(bytes(corrupt)) == Scan(start, index, corrupt=True)


@pytest.mark.parametrize(
    "payload",
    [
        b"one",  # wire type 7
        b"\x2a\x05\x0a\x03ab",  # a summary cut short inside
        b"\x1a\x02\xff\xfe",  # file_version not UTF-8
        b"\x2a\x06\x0a\x04\x0a\x02\xc3\x28",  # a tag not UTF-8
        b"\x10" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x00\x01",  # field number 0
        b"\x0c",  # an end-group with no group
        b"\x22\x80\x80\x80\x80\x08",  # a length of 2 GiB
        nested(60),  # deeper than the parser allows
    ],
    ids=[
        "wiretype7",
        "cut-summary",
        "bad-utf8",
        "bad-utf8-tag",
        "long-varint",
        "field0",
        "end-group",
        "huge-field",
        "too-deep",
    ],
)
def test_a_payload_that_passes_its_crc_but_is_no_event_is_corrupt(
    scan: Scanner, payload: bytes
) -> None:
    with pytest.raises(Exception, match="Error parsing message"):
        Event.FromString(payload)
    good = events.frame(summaries.file_version(1.0))
    data = good + events.frame(payload) + good
    assert scan(data) == Scan(len(good), 1, corrupt=True)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x08\x05",  # wall_time (a double) as a varint: an unknown field to the parser
        b"\xfb\x01\x08\x01\xfc\x01",  # a group in an unknown field
        b"\x10" + b"\xff" * 9 + b"\x7f",  # a 10-byte varint past 64 bits
        b"\xfa\x01\x02\xff\xfe",  # bytes that are not UTF-8 in an unknown field
        nested(40),  # deeper than the compiled check goes, not than the parser
    ],
    ids=["wire-mismatch", "unknown-group", "varint-overflow", "unknown-bytes", "deep"],
)
def test_unusual_payloads_the_parser_accepts_are_taken(scan: Scanner, payload: bytes) -> None:
    Event.FromString(payload)
    data = events.frame_all([payload, summaries.file_version(1.0)])
    assert scan(data) == Scan(len(data), 2, corrupt=False)


def header_of(length: int) -> bytes:
    """A record header claiming `length` bytes, its length CRC right."""
    header = struct.pack("<Q", length)
    return header + struct.pack("<I", events.masked_crc(header))


@pytest.mark.parametrize(
    ("length", "corrupt"),
    [
        (events.MAX_RECORD_BYTES, False),
        (events.MAX_RECORD_BYTES + 1, True),
        (2**40, True),
        (2**63 + 5, True),
    ],
    ids=["at-the-ceiling", "past-it", "2^40", "2^63"],
)
def test_a_length_past_the_ceiling_is_corrupt_not_torn(
    scan: Scanner, length: int, corrupt: bool
) -> None:
    """Issue 28 defect 3: a record up to MAX_RECORD_BYTES whose rest has not come waits (torn);
    a longer one is corruption: the scan stops there for good (on main, it waited for 2^40
    bytes, and tailing read the rest of the file looking for them)."""
    good = events.frame(summaries.file_version(1.0))
    assert scan(good + header_of(length) + b"\x08" * 100) == Scan(len(good), 1, corrupt=corrupt)


def test_mutated_payloads_get_the_same_verdict_on_both_paths() -> None:
    """Random bit flips, byte changes, insertions and cuts, each framed with good CRCs."""
    rng = random.Random(14)
    originals = payloads()
    verdicts = set()
    for _ in range(4000):
        payload = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(payload) + 1)
            change = rng.randrange(4)
            if change == 0 and at < len(payload):
                payload[at] ^= 1 << rng.randrange(8)
            elif change == 1 and at < len(payload):
                payload[at] = rng.randrange(256)
            elif change == 2:
                payload[at:at] = rng.randbytes(rng.randint(1, 3))
            else:
                del payload[at : at + rng.randint(1, 3)]
        found = both(events.frame(bytes(payload)))
        verdicts.add(found.corrupt)
    assert verdicts == {True, False}


def test_the_compiled_scan_vouches_for_common_records_itself() -> None:
    """No record TensorBoard's writers make is left to the slow parse (the speed-up's point)."""
    skip_if_pure_python_is_forced()
    data, starts = framed(payloads())
    end, count, stop = events.compiled.scan(data, 0, records._SCHEMA, events.MAX_RECORD_BYTES)
    assert (end, count, stop) == (len(data), len(starts) - 1, events.compiled.END)


def test_the_compiled_crc32c_matches_google_crc32c() -> None:
    skip_if_pure_python_is_forced()
    data = random.Random(3).randbytes(100_000)
    for start, length in [(0, 0), (1, 1), (3, 7), (5, 8), (2, 9), (7, 63), (1, 40_001)]:
        chunk = data[start : start + length]
        for portable in (False, True):
            assert events.compiled.crc32c(chunk, portable) == google_crc32c.value(chunk)


@pytest.mark.parametrize(
    "prelude",
    [
        "import os; os.environ['TBMIRROR_PURE_PYTHON'] = '1'",
        "import sys; sys.modules['tbmirror.mirror._records'] = None",
    ],
    ids=["switched-off", "not-importable"],
)
@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_without_the_extension_the_pure_python_path_runs(prelude: str) -> None:
    code = (
        f"{prelude}\n"
        "from tbmirror.mirror import events, records, summaries\n"
        "assert events.compiled is None\n"
        "data = events.frame(summaries.file_version(1.0))\n"
        "print(records.scan(data + data[:5]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"{Scan(len(events.frame(summaries.file_version(1.0))), 1, False)}"
    )


def test_records_are_framed_alike_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """events.frame_all frames in C when the extension is built: the same bytes as Python's, and
    they read back (CRCs included)."""
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(500)] + [b"", b"\x00" * 70000]
    framed = events.frame_all(payloads)
    assert [record.payload for record in events.iter_records(framed)] == payloads
    skip_if_pure_python_is_forced()
    with pytest.raises(TypeError):
        events.compiled.frame_all([b"a", "not bytes"])
    monkeypatch.setattr(events, "compiled", None)
    assert events.frame_all(payloads) == framed
