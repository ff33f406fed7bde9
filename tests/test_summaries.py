"""mirror/summaries.py builds text and HParams summaries itself: what TensorBoard's own helpers
build (byte for byte but for the order of a map's entries), without importing numpy (a first
sync's peak memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.text.summary_v2 import text_pb

from tbmirror.mirror import summaries

PARAMS = [
    {},
    {"lr": "0.1", "layers": "3", "name": "ü", "amp": "true", "off": "False", "inf": "inf"},
    {"z": "nan", "a": " 2 ", "empty": "", "big": "1e308", "neg": "-0"},
]


@pytest.mark.parametrize("params", PARAMS)
def test_session_start_is_tensorboards(params: dict[str, str]) -> None:
    values = {name: summaries.coerce_param(value) for name, value in params.items()}
    summary = hparams_pb(values, trial_id="trial 1", start_time_secs=1.7e9)
    expected = Event(wall_time=3.5, summary=summary)
    assert _parsed(summaries.session_start(params, "trial 1", 1.7e9, 3.5)) == _parsed(expected)


def _parsed(payload: bytes | Event) -> tuple[Event, plugin_data_pb2.HParamsPluginData]:
    """An HParams event and its plugin data, parsed (the order of a map's entries in protobuf
    bytes varies, even between two runs of TensorBoard's own helper)."""
    event = Event.FromString(payload) if isinstance(payload, bytes) else payload
    metadata = event.summary.value[0].metadata.plugin_data
    content = plugin_data_pb2.HParamsPluginData.FromString(metadata.content)
    metadata.content = b""
    return event, content


@pytest.mark.parametrize("status", sorted(summaries.SESSION_STATUS))
def test_session_end_is_tensorboards(status: str) -> None:
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(summaries.SESSION_STATUS[status]), end_time_secs=9.25
        )
    )
    value = Summary.Value(
        tag=hparams_metadata.SESSION_END_INFO_TAG,
        metadata=hparams_metadata.create_summary_metadata(data),
        tensor=hparams_metadata.NULL_TENSOR,
    )
    expected = Event(wall_time=10.0, summary=Summary(value=[value])).SerializeToString()
    assert summaries.session_end(status, 9.25, 10.0) == expected


@pytest.mark.parametrize("markdown", ["", "*héllo* 𝄞", "| a | b |\n|---|---|\n| 1 | 2 |"])
def test_text_is_tensorboards(markdown: str) -> None:
    expected = Event(wall_time=1.5, step=7, summary=text_pb("notes", markdown))
    assert summaries.text("notes", markdown, 1.5, 7) == expected.SerializeToString()


def test_tags_are_tensorboards() -> None:
    assert summaries.SESSION_START_TAG == hparams_metadata.SESSION_START_INFO_TAG
    assert summaries.SESSION_END_TAG == hparams_metadata.SESSION_END_INFO_TAG


def test_encoding_imports_no_numpy() -> None:
    code = (
        "import sys\n"
        "from tbmirror.mirror import summaries\n"
        "summaries.session_start({'lr': '0.1'}, 't', 1.0, 2.0)\n"
        "summaries.session_end('FINISHED', 1.0, 2.0)\n"
        "summaries.text('notes', 'x', 1.0, 0)\n"
        "summaries.ScalarEncoder('loss').encode(1.0, 0, 0.5)\n"
        "print(sorted(m for m in ('numpy', 'absl') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
