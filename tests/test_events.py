"""Event file framing, checked against TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from tbmirror.mirror import events, summaries


def read_events(path: Path) -> list[Event]:
    return [Event.FromString(raw) for raw in RawEventFileLoader(str(path)).Load()]


def test_records_read_back_with_tensorboards_reader(tmp_path: Path) -> None:
    path = tmp_path / events.new_file_name()
    encoder = summaries.ScalarEncoder("loss")
    path.write_bytes(
        events.frame_all(
            [summaries.file_version(1.0), *(encoder.encode(2.5, i, i / 3) for i in range(100))]
        )
    )
    loaded = read_events(path)
    assert loaded[0].file_version == "brain.Event:2"
    assert [(e.step, e.wall_time) for e in loaded[1:]] == [(i, 2.5) for i in range(100)]
    assert [e.summary.value[0].simple_value for e in loaded[1:]] == pytest.approx(
        [i / 3 for i in range(100)]
    )


def test_scalar_encoder_matches_a_freshly_built_proto() -> None:
    encoder = summaries.ScalarEncoder("a/b ü")
    for wall_time, step, value in [(1.5, 0, 0.0), (2.0, -3, float("inf")), (3.0, 2**40, -1e-3)]:
        expected = Event(
            wall_time=wall_time,
            step=step,
            summary=Summary(value=[Summary.Value(tag="a/b ü", simple_value=value)]),
        ).SerializeToString()
        assert encoder.encode(wall_time, step, value) == expected


def test_iter_records_waits_on_a_partial_record_and_flags_corruption() -> None:
    data = events.frame(b"one") + events.frame(b"two")
    partial = data + events.frame(b"three")[:-3]
    assert [r.payload for r in events.iter_records(partial)] == [b"one", b"two"]
    assert list(events.iter_records(data))[-1].end == len(data)
    corrupt = bytearray(data)
    corrupt[len(events.frame(b"one")) + 13] ^= 0xFF
    with pytest.raises(events.CorruptRecordError) as raised:
        list(events.iter_records(bytes(corrupt)))
    assert raised.value.offset == len(events.frame(b"one"))


def test_file_names_sort_in_creation_order() -> None:
    first = events.new_file_name()
    later = events.new_file_name(not_before_secs=events.file_secs(first) + 1)
    assert first.startswith("events.out.tfevents.") and sorted([later, first]) == [first, later]
    assert len(first.split(".")[3]) == 10
