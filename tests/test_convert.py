"""CSV and JSON-lines metric logs -> scalar events (tbmirror.mirror.convert), pure and fast."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from structlog.testing import capture_logs
from tensorboard.compat.proto.event_pb2 import Event

from tbmirror.mirror.convert import DEFAULT_STEP_COLUMNS, Kind, LineConverter

READ_TIME = 1_700_000_000.0

Point = tuple[str, int, float, float]  # tag, step, wall_time, value


def parse(payloads: list[bytes]) -> list[Point]:
    """The (tag, step, wall_time, simple_value) of each payload."""
    points = []
    for payload in payloads:
        event = Event.FromString(payload)
        assert len(event.summary.value) == 1
        value = event.summary.value[0]
        assert value.WhichOneof("value") == "simple_value"
        points.append((value.tag, event.step, event.wall_time, value.simple_value))
    return points


def by_tag(points: list[Point]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each tag's points, in order."""
    tags: dict[str, list[tuple[int, float]]] = {}
    for tag, step, _wall_time, value in points:
        tags.setdefault(tag, []).append((step, value))
    return tags


def convert(kind: Kind, text: str | bytes, **kwargs: Any) -> list[Point]:
    """Feed a whole file at once; it must be consumed completely."""
    data = text.encode() if isinstance(text, str) else text
    converter = LineConverter(kind, **kwargs)
    payloads, consumed = converter.feed(data, READ_TIME)
    assert consumed == len(data)
    assert converter.points == len(payloads)
    return parse(payloads)


LIGHTNING_CSV = (
    "epoch,step,train_loss,val_loss\n"
    "0,49,0.5,\n"
    "0,99,0.25,\n"
    "0,99,,0.75\n"
    "1,149,0.125,\n"
    "1,199,0.0625,\n"
    "1,199,,0.375\n"
)

JSONL = (
    '{"step": 10, "wall_time": 1000.5, "loss": 0.5, "train": {"acc": 0.25, "lr": {"g0": 2}}}\n'
    '{"step": 20, "timestamp": 1700000000500, "loss": 0.25, "done": true, "note": "hi"}\n'
    "\n"
    "not json\n"
    "[1, 2]\n"
    '{"loss": 0.125, "global_step": "x"}\n'
    '{"epoch": 7, "time": 5.0, "loss": 1.5, "tags": [1], "none": null}\n'
)


def test_lightning_sparse_csv_takes_steps_from_step_and_skips_empty_cells() -> None:
    with capture_logs() as logs:
        points = convert("csv", LIGHTNING_CSV)
    assert logs == []  # empty cells are not warned about
    assert by_tag(points) == {
        "epoch": [(49, 0.0), (99, 0.0), (100, 0.0), (149, 1.0), (199, 1.0), (200, 1.0)],
        "train_loss": [(49, 0.5), (99, 0.25), (149, 0.125), (199, 0.0625)],
        "val_loss": [(99, 0.75), (199, 0.375)],
    }
    assert {wall_time for _, _, wall_time, _ in points} == {READ_TIME}
    # Points of one row come in column order.
    assert [tag for tag, *_ in points[:2]] == ["epoch", "train_loss"]


def test_keras_csv_logger_takes_steps_from_epoch() -> None:
    text = (
        "epoch,accuracy,loss,val_accuracy,val_loss\n"
        "0,0.5,2.0,0.25,4.0\n"
        "1,0.75,1.0,0.5,2.0\n"
        "2,0.875,0.5,0.75,1.0\n"
    )
    assert by_tag(convert("csv", text)) == {
        "accuracy": [(0, 0.5), (1, 0.75), (2, 0.875)],
        "loss": [(0, 2.0), (1, 1.0), (2, 0.5)],
        "val_accuracy": [(0, 0.25), (1, 0.5), (2, 0.75)],
        "val_loss": [(0, 4.0), (1, 2.0), (2, 1.0)],
    }


def test_csv_without_step_column_uses_the_data_row_index() -> None:
    text = "loss,acc\n\n4.0,0.5\n2.0,\n\n1.0,0.75\n"
    assert by_tag(convert("csv", text)) == {
        "loss": [(0, 4.0), (1, 2.0), (2, 1.0)],
        "acc": [(0, 0.5), (2, 0.75)],
    }


def test_step_columns_order_is_configurable() -> None:
    text = "epoch,iter,loss\n0,10,1.0\n0,20,2.0\n"
    assert by_tag(convert("csv", text, step_columns=("iter", "epoch"))) == {
        "epoch": [(10, 0.0), (20, 0.0)],
        "loss": [(10, 1.0), (20, 2.0)],
    }
    assert DEFAULT_STEP_COLUMNS == ("step", "global_step", "epoch")


def test_csv_wall_time_column_in_seconds_or_milliseconds() -> None:
    text = "step,timestamp,loss\n1,1000.5,1.0\n2,1700000000250,2.0\n3,,3.0\n4,abc,4.0\n"
    points = convert("csv", text)
    assert [(tag, step, wall) for tag, step, wall, _ in points] == [
        ("loss", 1, 1000.5),
        ("loss", 2, 1700000000.25),
        ("loss", 3, READ_TIME),
        ("loss", 4, READ_TIME),
    ]


def test_csv_step_cells_float_empty_or_bad_and_quoted_cells() -> None:
    text = (
        'step,"loss, total",acc\n'
        '3.0,"1.0",0.5,999\n'  # extra cell ignored
        ",2.0\n"  # empty step: row index 1; missing acc cell
        "x,4.0,nan\n"  # bad step: row index 2
        "nan,8.0\n"  # non-finite step: a poison value, the line is skipped
        "1e1,inf,-inf\n"
    )
    points = convert("csv", text)
    assert [(tag, step) for tag, step, _, _ in points] == [
        ("loss, total", 3),
        ("acc", 3),
        ("loss, total", 4),  # source step 1 <= 3: moved just past the previous point
        ("loss, total", 5),
        ("acc", 4),
        ("loss, total", 10),
        ("acc", 10),
    ]
    values = [value for *_, value in points]
    assert values[:4] == [1.0, 0.5, 2.0, 4.0]
    assert values[4] != values[4]  # nan
    assert values[5:] == [float("inf"), float("-inf")]


def test_repeated_and_backward_steps_follow_the_step_rule_per_tag() -> None:
    text = "step,a,b\n0,1,\n1,2,5\n1,3,\n0,4,6\n5,5,\n5,,7\n"
    assert by_tag(convert("csv", text)) == {
        "a": [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (5, 5.0)],
        "b": [(1, 5.0), (2, 6.0), (5, 7.0)],
    }


def test_partial_last_line_is_kept_for_the_next_feed() -> None:
    text = "step,énergie_µ\n1,0.5\n2,0.25\n3,0.125\n"
    data = text.encode()
    whole = convert("csv", data)
    # Every split point, including inside "é" and "µ" (two bytes each).
    for split in range(len(data) + 1):
        converter = LineConverter("csv")
        first, consumed = converter.feed(data[:split], READ_TIME)
        assert consumed == data[:split].rfind(b"\n") + 1
        second, rest = converter.feed(data[consumed:], READ_TIME)
        assert consumed + rest == len(data)
        assert parse(first + second) == whole, split
    assert [tag for tag, *_ in whole] == ["énergie_µ"] * 3


def test_partial_line_split_inside_a_multibyte_character() -> None:
    data = '{"step": 1, "ü": 0.5}\n{"step": 2, "ü": 0.25}\n'.encode()
    split = data.index("ü".encode(), 25) + 1  # between the two bytes of the second "ü"
    converter = LineConverter("jsonl")
    first, consumed = converter.feed(data[:split], READ_TIME)
    assert consumed == data.index(b"\n") + 1
    assert converter.points == 1
    second, rest = converter.feed(data[consumed:], READ_TIME)
    assert rest == len(data) - consumed
    assert converter.points == 1
    assert parse(first + second) == [("ü", 1, READ_TIME, 0.5), ("ü", 2, READ_TIME, 0.25)]


def test_feed_without_a_complete_line_consumes_nothing() -> None:
    converter = LineConverter("csv")
    assert converter.feed(b"step,loss", READ_TIME) == ([], 0)
    assert converter.points == 0
    assert converter.feed(b"", READ_TIME) == ([], 0)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("csv", LIGHTNING_CSV + "2,abc,zz,0.5\n\n2,250,0.03125,\n"),
        ("jsonl", JSONL + '{"loss": 3.0}\n{"step": 1, "loss": 4.0}\n'),
        ("csv", "loss,acc\n1,2\n,3\n\n4,\nloss,acc\n5,6\n"),
        ("jsonl", '{"a": 1}\n{"b": 2}\n\n{"a": 3, "b": 4}\n'),
    ],
)
def test_state_round_trip_continues_identically(kind: Kind, text: str) -> None:
    data = ("\ufeff" + text).encode()
    with capture_logs() as whole_logs:
        whole = convert(kind, data)
    line_ends = [index + 1 for index, byte in enumerate(data) if byte == ord("\n")]
    for split in [0, 1, *line_ends]:
        with capture_logs() as logs:
            converter = LineConverter(kind)
            first, consumed = converter.feed(data[:split], READ_TIME)
            state = json.loads(json.dumps(converter.state()))
            restored = LineConverter(kind, DEFAULT_STEP_COLUMNS, state=state)
            second, rest = restored.feed(data[consumed:], READ_TIME)
        assert consumed + rest == len(data)
        assert parse(first + second) == whole, split
        assert logs == whole_logs, split


def test_non_numeric_column_is_warned_once_even_after_restore() -> None:
    with capture_logs() as logs:
        converter = LineConverter("csv")
        converter.feed(b"step,loss,name\n1,0.5,abc\n2,0.25,def\n", READ_TIME)
        restored = LineConverter("csv", state=json.loads(json.dumps(converter.state())))
        payloads, _ = restored.feed(b"3,x,ghi\n", READ_TIME)
    assert payloads == []
    assert logs == [  # the column and the line, never the value
        {"event": "non_numeric_column_ignored", "log_level": "warning", "column": "name",
         "line": 2},
        {"event": "non_numeric_column_ignored", "log_level": "warning", "column": "loss",
         "line": 4},
    ]  # fmt: skip


def test_jsonl_fields_steps_wall_times_nesting_and_invalid_lines() -> None:
    with capture_logs() as logs:
        points = convert("jsonl", JSONL)
    assert points == [
        ("loss", 10, 1000.5, 0.5),
        ("train/acc", 10, 1000.5, 0.25),
        ("train/lr/g0", 10, 1000.5, 2.0),
        ("loss", 20, 1700000000.5, 0.25),
        # No numeric step: the object-line index (2; the two invalid lines are not counted).
        ("loss", 21, READ_TIME, 0.125),
        ("loss", 22, 5.0, 1.5),  # source step 7 (epoch) <= 21: moved past
    ]
    assert [(entry["event"], entry.get("line"), entry.get("column")) for entry in logs] == [
        ("non_numeric_column_ignored", 2, "done"),
        ("non_numeric_column_ignored", 2, "note"),
        ("invalid_line_skipped", 4, None),  # blank lines count in line numbers
        ("invalid_line_skipped", 5, None),
        ("non_numeric_column_ignored", 6, "global_step"),
        ("non_numeric_column_ignored", 7, "tags"),
        ("non_numeric_column_ignored", 7, "none"),
    ]
    assert all("error" in entry for entry in logs if entry["event"] == "invalid_line_skipped")


def test_jsonl_without_step_uses_the_object_line_index() -> None:
    text = '{"a": 1}\n\n{"a": 2, "b": 3}\n{"b": 4, "step": 9}\n'
    assert by_tag(convert("jsonl", text)) == {"a": [(0, 1.0), (1, 2.0)], "b": [(1, 3.0), (9, 4.0)]}


def test_utf8_bom_is_stripped_at_the_start_only() -> None:
    bom = "\ufeff".encode()
    data = bom + b"step,loss\n1,0.5\n"
    assert convert("csv", data) == [("loss", 1, READ_TIME, 0.5)]
    # The BOM arriving in pieces, with no complete line yet.
    converter = LineConverter("csv")
    assert converter.feed(data[:2], READ_TIME) == ([], 0)
    payloads, consumed = converter.feed(data, READ_TIME)
    assert consumed == len(data)
    assert parse(payloads) == [("loss", 1, READ_TIME, 0.5)]
    jsonl = bom + b'{"step": 3, "x": 1}\n'
    assert convert("jsonl", jsonl) == [("x", 3, READ_TIME, 1.0)]
    # A BOM-like prefix on a later feed is data, not a BOM.
    converter = LineConverter("jsonl")
    converter.feed(b'{"x": 1}\n', READ_TIME)
    with capture_logs() as logs:
        assert converter.feed(jsonl, READ_TIME)[0] == []
    assert [entry["event"] for entry in logs] == ["invalid_line_skipped"]


def test_crlf_line_endings() -> None:
    csv_text = "step,loss\r\n1,0.5\r\n\r\n2,0.25\r\n"
    assert convert("csv", csv_text) == [
        ("loss", 1, READ_TIME, 0.5),
        ("loss", 2, READ_TIME, 0.25),
    ]
    jsonl_text = '{"step": 1, "loss": 0.5}\r\n{"step": 2, "loss": 0.25}\r\n'
    assert convert("jsonl", jsonl_text) == [
        ("loss", 1, READ_TIME, 0.5),
        ("loss", 2, READ_TIME, 0.25),
    ]


def test_duplicate_header_row_is_skipped_and_not_counted() -> None:
    text = "loss, acc\n1.0,0.5\nloss,acc\n2.0,0.25\n"
    with capture_logs() as logs:
        points = convert("csv", text)
    assert by_tag(points) == {"loss": [(0, 1.0), (1, 2.0)], "acc": [(0, 0.5), (1, 0.25)]}
    assert logs == []


def test_points_counts_the_last_feed_only() -> None:
    converter = LineConverter("csv")
    converter.feed(b"step,a,b\n1,1,2\n", READ_TIME)
    assert converter.points == 2
    converter.feed(b"2,3,\n3,4,\n4,5,", READ_TIME)
    assert converter.points == 2


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        LineConverter(cast(Kind, "xml"))


def test_keys_cut_to_the_same_tensorboard_tag_are_one_series() -> None:
    """TensorBoard tags are cut to 1,000 bytes: two longer keys with one prefix are one tag there,
    so their steps must still strictly increase together."""
    prefix = "k" * 1000
    text = "".join(
        json.dumps({"step": step, prefix + "a": 1.0, prefix + "b": 2.0}) + "\n" for step in (1, 2)
    )
    points = convert("jsonl", text)
    assert {tag for tag, *_ in points} == {prefix}
    assert [step for _, step, _, _ in points] == [1, 2, 3, 4]
